"""Ctrl-C during a long backoff: ``portshift run`` (a real subprocess, the built-in example source
-> this sink) against a store that answers every request 503 with ``Retry-After: 600`` stops
within a second of SIGINT, exit 130, whether the backoff is in ``check()`` (which the run calls
before listing) or in a put (the store then lets the check's probe session through). The sink's
retries go through ``portshift.Attempts`` and wait on the job's cancel event, never
``time.sleep``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portshift.testing import Request, clean_env, interrupt_run

from .conftest import Certs, TLSServer, server_context

pytestmark = pytest.mark.serial  # measures time or memory: run alone (make test's second part)

BUSY = json.dumps({"error": {"code": 503, "message": "Backend Error", "errors": [{"reason": "backendError"}]}}).encode()


@pytest.mark.parametrize("phase", ["check", "put"])
def test_sigint_during_a_503_backoff_stops_the_run_within_a_second(tmp_path: Path, certs: Certs, phase: str) -> None:
    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if phase == "put" and "uploadType=resumable" in path:  # check(): open the probe session ...
            return 200, {"Location": f"{server.url}/upload/storage/v1/b/exports/o?upload_id=probe"}, b""
        if phase == "put" and method == "DELETE":  # ... and cancel it
            return 499, {}, b""
        return 503, {"Retry-After": "600", "Content-Type": "application/json"}, BUSY

    server = TLSServer(server_context(certs.ca), respond)

    def slowed() -> list[Request]:
        return [r for r in server.requests if phase == "check" or "uploadType=multipart" in r.target]

    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 1000\n\n'
        f'[sink]\ntype = "gcs"\nbucket = "exports"\napi_endpoint = "{server.url}"\nca_bundle = "{certs.ca_pem}"\n'
        "anonymous = true\n"
    )
    env = clean_env(drop=("PORTSHIFT_", "GOOGLE_"))
    with server:
        run = interrupt_run(job, tmp_path / "s.db", env=env, reached=lambda: bool(slowed()), count=lambda: len(server.requests))
    run.assert_stopped_promptly()
