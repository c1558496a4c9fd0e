"""Ctrl-C during a long backoff: ``portshift run`` (a real subprocess, the built-in example source
-> this sink) against a store that answers every request 503 ServerBusy with ``Retry-After: 600``
stops within a second of SIGINT, exit 130, whether the backoff is in ``check()`` (which the run
calls before listing) or in a put (the store then accepts the check's probe block). The sink's
retry policy (azure-storage-blob's, with its ``sleep`` overridden) waits on the job's cancel event
instead of ``time.sleep``."""

from __future__ import annotations

from pathlib import Path

import pytest

from portshift.testing import LocalCA, Request, clean_env, interrupt_run

from .conftest import ACCOUNT, Azurite, TLSServer

pytestmark = pytest.mark.serial  # measures time or memory: run alone (make test's second part)

STAGED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nRetry-After: 600\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


@pytest.mark.parametrize("phase", ["check", "put"])
def test_sigint_during_a_server_busy_backoff_stops_the_run_within_a_second(
    tmp_path: Path, azurite: Azurite, certs: LocalCA, phase: str
) -> None:
    def is_probe(req: Request) -> bool:  # check(): Put Block (comp=block); a small file: Put Blob
        return "comp=block" in req.target

    server = TLSServer(certs.server_context(), lambda req: STAGED if phase == "put" and is_probe(req) else BUSY)

    def slowed() -> list[Request]:
        return [r for r in server.requests if phase == "check" or not is_probe(r)]

    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 1000\n\n'
        f'[sink]\ntype = "azure"\naccount_url = "https://127.0.0.1:{server.port}/{ACCOUNT}"\ncontainer = "exports"\n'
        f'ca_bundle = "{azurite.ca}"\n'
    )
    env = clean_env(PORTSHIFT_AZURE_SAS=azurite.sas())
    with server:
        run = interrupt_run(job, tmp_path / "s.db", env=env, reached=lambda: bool(slowed()), count=lambda: len(server.requests))
    run.assert_stopped_promptly()
