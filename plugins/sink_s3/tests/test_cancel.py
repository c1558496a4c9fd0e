"""Ctrl-C during a long backoff: ``portshift run`` (a real subprocess, the built-in example source
-> this sink) against a store that answers every request 503 SlowDown with ``Retry-After: 600``
stops within a second of SIGINT, exit 130, whether the backoff is in ``check()`` (which the run
calls before listing) or in a put (the check passes against moto, the uploads get the 503). The
sink's retries wait on the job's cancel event (botocore's own retries, which ``time.sleep``, are
off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portshift.testing import clean_env, interrupt_run

from .conftest import ACCESS_KEY, SECRET_KEY, Certs

pytestmark = pytest.mark.serial  # measures time or memory: run alone (make test's second part)


@pytest.mark.parametrize("phase", ["check", "put"])
def test_sigint_during_a_slowdown_backoff_stops_the_run_within_a_second(
    tmp_path: Path, tls_proxy: Any, certs: Certs, bucket: str, phase: str
) -> None:
    slow = tls_proxy.error_response(503, "Slow Down", "SlowDown", headers={"Retry-After": "600"})

    def slowed(req: Any) -> bool:  # check(): a conditional PutObject; a small file: a plain one
        return phase == "check" or (req.method == "PUT" and "If-Match" not in req.headers)

    tls_proxy.rule = lambda req: tls_proxy.Action(respond=slow) if slowed(req) else None
    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 1000\n\n'
        f'[sink]\ntype = "s3"\nbucket = "{bucket}"\nregion = "us-east-1"\nendpoint_url = "{tls_proxy.url}"\n'
        f'ca_bundle = "{certs.ca_pem}"\naddressing_style = "path"\n'
    )
    keys = {"PORTSHIFT_AWS_ACCESS_KEY_ID": ACCESS_KEY, "PORTSHIFT_AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env = clean_env(drop=("AWS_", "PORTSHIFT_"), **keys)
    # every transfer is then waiting out the 600 s Retry-After
    run = interrupt_run(
        job, tmp_path / "s.db", env=env, reached=lambda: any(slowed(r) for r in tls_proxy.seen), count=lambda: len(tls_proxy.seen)
    )
    run.assert_stopped_promptly()
