"""Ctrl-C during a long backoff: ``portshift run`` (a real subprocess, the built-in example source
-> this sink) against a store that answers every request 503 ServerBusy with ``Retry-After: 600``
stops within a second of SIGINT, exit 130, whether the backoff is in ``check()`` (which the run
calls before listing) or in a put (the store then accepts the check's probe block). The sink's
retry policy (azure-storage-blob's, with its ``sleep`` overridden) waits on the job's cancel event
instead of ``time.sleep``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portshift import ExitCode
from portshift.testing import LocalCA, Request

from .conftest import ACCOUNT, Azurite, TLSServer

STAGED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nRetry-After: 600\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


@pytest.mark.parametrize("phase", ["check", "put"])
def test_sigint_during_a_server_busy_backoff_stops_the_run_within_a_second(
    tmp_path: Path, azurite: Azurite, certs: LocalCA, phase: str
) -> None:
    def is_probe(request: Request) -> bool:  # check(): Put Block (comp=block); a small file: Put Blob
        return "comp=block" in request.target

    server = TLSServer(certs.server_context(), lambda req: STAGED if phase == "put" and is_probe(req) else BUSY)

    def slowed() -> list[bytes]:
        return [h for h in server.requests if phase == "check" or not is_probe(h)]

    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 1000\n\n'
        f'[sink]\ntype = "azure"\naccount_url = "https://127.0.0.1:{server.port}/{ACCOUNT}"\ncontainer = "exports"\n'
        f'ca_bundle = "{azurite.ca}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_AZURE_SAS"] = azurite.sas()
    proc = subprocess.Popen(
        [sys.executable, "-m", "portshift", "run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not slowed() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert slowed() and proc.poll() is None, f"the sink never reached the store: {proc.communicate()[1]}"
        time.sleep(0.5)  # every transfer is now waiting out the Retry-After
        asked = len(server.requests)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    print(f"stopped {elapsed:.3f} s after SIGINT, exit {proc.returncode}")
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert elapsed < 1.0, f"stopped {elapsed:.2f} s after SIGINT"
    assert len(server.requests) == asked, "no request after the signal"
    assert "Traceback" not in err
