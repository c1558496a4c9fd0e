"""Through the service from the Chorus simulator (portshift-source-chorus) into a local folder: the
token is a canary that must reach the simulator and appear nowhere else."""

from __future__ import annotations

import time

from portshift_source_chorus.simulator import ChorusSimulator

from .conftest import CHORUS_TOKEN, CHORUS_WINDOW, Server, find_canary, start_job, wait_status
from .test_api import verify_export
from .test_secrets import all_files, proc_texts


def test_a_chorus_export_through_the_api_and_a_sweep_for_its_token(server: Server, chorus: ChorusSimulator) -> None:
    c = server.client()
    before = chorus.stats.total("api")
    job = start_job(c, {"source": {"type": "chorus", "token": CHORUS_TOKEN}, "sink": {"type": "local"}, **CHORUS_WINDOW})
    proc = proc_texts(server.pid)
    while (snap := c.get(f"/api/jobs/{job['id']}").json())["status"] in ("starting", "running"):
        for pid in server.workers():
            proc.update(proc_texts(pid))
        time.sleep(0.05)
    assert snap["status"] == "complete", snap
    assert chorus.stats.total("api") > before, "the worker talked to the simulator with the token it was handed"
    assert snap["recordings"]["done"] >= 5 and snap["files"] >= 10
    root = server.local_root / server.work_dir(job["id"]).name / snap["export_root"]
    assert verify_export(root) == snap["files"] + 1
    assert any(k.endswith("/environ") and not k.startswith(f"{server.pid}/") for k in proc), "a worker was seen"
    assert not {k: h for k, data in proc.items() if (h := find_canary(data, [CHORUS_TOKEN]))}
    leaks = {str(p): h for p in all_files(server.data_dir.parent) if (h := find_canary(p.read_bytes(), [CHORUS_TOKEN]))}
    assert not leaks, leaks


def test_a_wrong_chorus_token_is_a_clear_failure(server: Server) -> None:
    c = server.client()
    wrong = "canary-wrong-chorus-token-0123456789"
    job = start_job(c, {"source": {"type": "chorus", "token": wrong}, "sink": {"type": "local"}, **CHORUS_WINDOW})
    done = wait_status(c, job["id"], ("failed", "complete"))
    assert done["status"] == "failed"
    assert done["error"] and wrong not in str(done)
    assert "401" in done["error"] or "token" in done["error"].lower() or "auth" in done["error"].lower(), done["error"]
