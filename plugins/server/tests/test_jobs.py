"""Workers: one fresh process per job, isolated; killed or cancelled jobs lose nothing and resume."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .conftest import Server, canary_job, canary_value, start_job, wait_status
from .test_api import verify_export


def exported(root: Path) -> dict[str, tuple[int, int]]:
    """Finished files under an export root: relative path -> (inode, mtime_ns)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.name.endswith(".part"):
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return out


def recorded_files(state: Path) -> set[str]:
    """The files a job's state has recorded as stored (keys under the export root)."""
    import sqlite3

    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10) as db:
        return {row[0] for row in db.execute("select key from files")}


def open_files(pid: int) -> set[str]:
    """What the worker ``pid`` and its children (the hardened child that runs the job) have open."""
    paths = set()
    try:
        children = [
            int(c) for t in os.listdir(f"/proc/{pid}/task") for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()
        ]
    except OSError:
        children = []
    for p in (pid, *children):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                paths.add(os.readlink(f"/proc/{p}/fd/{fd}"))
            except OSError:
                pass
    return paths


def test_two_jobs_at_once_run_in_separate_workers_and_share_no_files(server: Server) -> None:
    c = server.client()
    a = start_job(c, canary_job(canary_value("a"), count=8, delay=0.3, seed=1))
    b = start_job(c, canary_job(canary_value("b"), count=8, delay=0.3, seed=2))
    pa, pb = server.worker_of(a["id"]), server.worker_of(b["id"])
    assert pa != pb
    both_running = False
    seen: dict[int, set[str]] = {pa: set(), pb: set()}
    while True:
        sa, sb = c.get(f"/api/jobs/{a['id']}").json(), c.get(f"/api/jobs/{b['id']}").json()
        if sa["status"] == "running" and sb["status"] == "running" and sa["files"] and sb["files"]:
            both_running = True
        for pid in (pa, pb):
            try:
                seen[pid] |= open_files(pid)
            except OSError:
                pass
        if sa["status"] not in ("starting", "running") and sb["status"] not in ("starting", "running"):
            break
        time.sleep(0.05)
    assert both_running, "the two jobs were never running at the same time"
    assert sa["status"] == sb["status"] == "complete", (sa, sb)
    dir_a, dir_b = server.work_dir(a["id"]), server.work_dir(b["id"])
    for d in (dir_a, dir_b):
        assert d.stat().st_mode & 0o777 == 0o700
        assert (d / "job.toml").stat().st_mode & 0o777 == 0o600
        assert (d / "state.db").is_file()
    # a worker only ever had its own job's files open
    assert any(str(dir_a) in p for p in seen[pa]) and any(str(dir_b) in p for p in seen[pb])
    assert not any(str(dir_b) in p or b["id"] in p for p in seen[pa])
    assert not any(str(dir_a) in p or a["id"] in p for p in seen[pb])
    for job in (sa, sb):
        root = server.local_root / server.work_dir(job["id"]).name / job["export_root"]
        assert verify_export(root) == 17
    assert sa["export_root"] != sb["export_root"]


def test_a_worker_killed_mid_job_is_reported_failed_and_the_job_resumes_losing_nothing(server: Server) -> None:
    c = server.client()
    token = canary_value("kill")
    job = start_job(c, canary_job(token, count=12, delay=0.25))
    pid = server.worker_of(job["id"])
    fd0 = os.readlink(f"/proc/{pid}/fd/0")
    assert fd0.startswith("socket:") or fd0 == "/dev/null", "credentials come over the handover socket, never a pipe"
    deadline = time.monotonic() + 30
    while (snap := c.get(f"/api/jobs/{job['id']}").json())["files"] < 6:
        assert snap["status"] == "running" and time.monotonic() < deadline, snap
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    failed = wait_status(c, job["id"], ("failed", "complete", "cancelled"))
    assert failed["status"] == "failed", failed
    assert "signal 9" in failed["error"] and "resume" in failed["error"]
    root = server.local_root / server.work_dir(job["id"]).name / failed["export_root"]
    before = exported(root)
    assert 6 <= len(before) < 24 and "portshift-manifest.txt" not in before
    # what the state recorded before the kill is kept; a small file of a recording still under way
    # is recorded with its recording's outcome (one transaction per recording), so it is redone
    recorded = recorded_files(server.work_dir(job["id"]) / "state.db")
    assert len(recorded & set(before)) >= 6, (sorted(recorded)[:5], sorted(before)[:5])

    # resuming needs the credentials again (they were never stored)
    assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"type": "canary"}}).status_code == 400
    resp = c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}})
    assert resp.status_code == 202, resp.text
    done = wait_status(c, job["id"], ("complete", "failed"))
    assert done["status"] == "complete", done
    assert done["attempts"] == 2 and done["export_root"] == failed["export_root"]
    after = exported(root)
    for rel, ident in before.items():
        assert rel in after
        if rel in recorded:
            assert after[rel] == ident, f"{rel} was exported again instead of kept"
    assert verify_export(root) == 25  # 24 files + the JSON manifest, all re-hashed
    assert done["files"] == 24
    assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}}).status_code == 409


def test_cancel_stops_the_worker_cleanly_and_the_job_can_be_resumed(server: Server) -> None:
    c = server.client()
    token = canary_value("cancel")
    job = start_job(c, canary_job(token, count=12, delay=0.25))
    pid = server.worker_of(job["id"])
    while c.get(f"/api/jobs/{job['id']}").json()["files"] < 2:
        time.sleep(0.05)
    resp = c.post(f"/api/jobs/{job['id']}/cancel", json={})
    assert resp.status_code == 202 and resp.json()["status"] == "cancelling"
    cancelled = wait_status(c, job["id"], ("cancelled", "failed", "complete"), timeout=30)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["files"] < 24
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert c.post(f"/api/jobs/{job['id']}/cancel", json={}).status_code == 409
    assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}}).status_code == 202
    done = wait_status(c, job["id"], ("complete", "failed"))
    assert done["status"] == "complete" and done["files"] == 24
    verify_export(server.local_root / server.work_dir(job["id"]).name / done["export_root"])
