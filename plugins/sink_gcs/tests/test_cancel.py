"""Ctrl-C during a long backoff: ``portshift run`` (a real subprocess, the built-in example source
-> this sink) against a store that answers every request 503 with ``Retry-After: 600`` stops
within a second of SIGINT, exit 130, whether the backoff is in ``check()`` (which the run calls
before listing) or in a put (the store then lets the check's probe session through). The sink's
retries go through ``portshift.Attempts`` and wait on the job's cancel event, never
``time.sleep``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portshift import ExitCode

from .conftest import Certs, TLSServer, server_context

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

    def slowed() -> list[object]:
        return [r for r in server.requests if phase == "check" or "uploadType=multipart" in r.target]

    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 1000\n\n'
        f'[sink]\ntype = "gcs"\nbucket = "exports"\napi_endpoint = "{server.url}"\nca_bundle = "{certs.ca_pem}"\n'
        "anonymous = true\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "GOOGLE_"))}
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
