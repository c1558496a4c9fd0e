"""The service stopping or crashing while jobs run: nothing is lost, every job can be resumed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from portshift_source_chorus.simulator import ChorusSimulator

from .conftest import Certs, canary_job, canary_value, start_job, start_server, wait_status
from .test_api import verify_export


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_files(client, job_id: str, n: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job_id}").json()["files"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["stopped", "crashed"])
def test_jobs_of_a_stopped_or_crashed_service_resume_after_a_restart(
    certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path: Path, how: str
) -> None:
    token = canary_value("restart")
    first = start_server(certs, plugin_path, chorus, tmp_path, "--transfers", "2")
    try:
        c = first.client()
        job = start_job(c, canary_job(token, count=10, delay=0.25))
        worker = first.worker_of(job["id"])
        wait_files(c, job["id"], 2)
        if how == "stopped":
            first.proc.send_signal(signal.SIGTERM)  # a clean stop: workers are cancelled, state kept
            assert first.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
            assert not alive(worker), "the service stopped its worker"
        else:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            assert alive(worker), "a worker outlives a crashed service"
            os.kill(worker, signal.SIGKILL)  # ...until it is killed too (the machine went down, say)
            deadline = time.monotonic() + 10
            while alive(worker) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        first.stop()

    second = start_server(certs, plugin_path, chorus, tmp_path, "--transfers", "2")
    try:
        c = second.client()
        snap = c.get(f"/api/jobs/{job['id']}").json()
        expected = "cancelled" if how == "stopped" else "failed"
        assert snap["status"] == expected, snap
        assert "resume" in snap["error"]
        assert 2 <= snap["files"] < 20
        assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}}).status_code == 202
        done = wait_status(c, job["id"], ("complete", "failed"))
        assert done["status"] == "complete" and done["files"] == 20 and done["attempts"] == 2, done
        assert verify_export(second.local_root / second.work_dir(job["id"]).name / done["export_root"]) == 21
    finally:
        second.stop()
