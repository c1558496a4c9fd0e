"""Retention: a job finished longer ago than the period is forgotten (work folder, worker state,
service row: its id then answers 404); a younger one, a running one and the sign-ups stay.

With a fake clock against both service databases (SQLite and a real PostgreSQL with TLS), and
end to end with a real `portshift serve` whose period is a few seconds.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from portshift_server.db import ServiceDB
from portshift_server.job_roles import PgJobStates
from portshift_server.job_state import FileJobStates
from portshift_server.retention import sweep
from portshift_server.service_store import open_service_db
from portshift_server.workdirs import WorkDirs
from portshift_source_chorus.simulator import ChorusSimulator

from . import pg_fixtures
from .conftest import Certs, canary_job, canary_value, start_server, wait_status
from .pg_fixtures import ServiceDatabase
from .test_service_pg import run_worker

pg_server, service_database = pg_fixtures.pg_server, pg_fixtures.service_database  # the fixtures

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)  # the fake clock
OLD, YOUNG, OLD_FAILED, RUNNING, OLD_BUT_RESUMED = (
    "old-complete-aaaaaaaaaa",
    "young-complete-aaaaaaaa",
    "old-failed-aaaaaaaaaaaa",
    "running-aaaaaaaaaaaaaaa",
    "old-resumed-aaaaaaaaaaa",
)


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat(timespec="seconds")


def fill(db: Any, jobs_dir: Path) -> None:
    rows = {
        OLD: ("complete", ago(7.01)),
        YOUNG: ("complete", ago(6.99)),
        OLD_FAILED: ("failed", ago(30)),
        RUNNING: ("running", None),
        OLD_BUT_RESUMED: ("failed", ago(30)),
    }
    for job_id, (status, finished) in rows.items():
        db.insert_job(id=job_id, status=status, finished_at=finished, source_type="canary", sink_type="local")
        (jobs_dir / job_id).mkdir(parents=True)
        (jobs_dir / job_id / "job.toml").write_text("[job]\n")
    db.add_signup("Ada", "ada@example.com", "Engines")


def check(db: Any, jobs_dir: Path, removed: int) -> None:
    assert removed == 2
    for job_id in (OLD, OLD_FAILED):
        assert db.job(job_id) is None and not (jobs_dir / job_id).exists()
    for job_id in (YOUNG, RUNNING, OLD_BUT_RESUMED):
        assert db.job(job_id) is not None and (jobs_dir / job_id / "job.toml").is_file()
    assert [s["email"] for s in db.signups()] == ["ada@example.com"]  # kept until the operator deletes them


def test_retention_on_sqlite_with_a_fake_clock(tmp_path: Path) -> None:
    db = ServiceDB(tmp_path / "service.db")
    jobs_dir = tmp_path / "jobs"
    try:
        fill(db, jobs_dir)
        (jobs_dir / OLD / "state.db").write_bytes(b"state")
        removed = sweep(db, FileJobStates(), jobs_dir, 7, now=NOW, running=lambda: {OLD_BUT_RESUMED})
        check(db, jobs_dir, removed)
        assert sweep(db, FileJobStates(), jobs_dir, 7, now=NOW, running=lambda: {OLD_BUT_RESUMED}) == 0
        # a shorter period reaches the younger job too
        assert sweep(db, FileJobStates(), jobs_dir, 6, now=NOW, running=set) == 2
        assert db.job(YOUNG) is None and db.job(OLD_BUT_RESUMED) is None and db.job(RUNNING) is not None
    finally:
        db.close()


def test_retention_on_postgres_removes_the_workers_state(service_database: ServiceDatabase, tmp_path: Path) -> None:
    db = open_service_db(tmp_path, service_database.options(tmp_path))
    jobs_dir = tmp_path / "jobs"
    try:
        fill(db, jobs_dir)
        states = PgJobStates(db)
        for job_id in (OLD, YOUNG, OLD_FAILED):
            run_worker(states, job_id, tmp_path, 2)
        states.end(YOUNG)
        removed = sweep(db, states, jobs_dir, 7, now=NOW, running=lambda: {OLD_BUT_RESUMED})
        check(db, jobs_dir, removed)
        with service_database.admin() as c:
            owners = {r[0] for r in c.execute("select service_job from portshift_service.state_owners")}
            assert owners == {YOUNG}
            for table in ("recordings", "files", "sink_journal", "missing_artifacts", "workers", "jobs"):
                column = "id" if table == "jobs" else "job_id"
                left = c.execute(f"select count(distinct {column}) from public.{table}").fetchone()[0]  # noqa: S608 - fixed
                assert left == 1, table  # the young job's state only
            slots = [r[0] for r in c.execute("select key from public.rate_slots")]
            assert len(slots) == 1 and slots[0].startswith("source:"), slots  # the young job's budget only
            assert c.execute("select count(*) from portshift_service.job_roles").fetchone()[0] == 0
    finally:
        db.close()


def test_a_forgotten_job_answers_404(certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path: Path) -> None:
    period = 3.0  # seconds
    server = start_server(certs, plugin_path, chorus, tmp_path / "svc", "--retention-days", str(period / 86400))
    try:
        c = server.client()
        job = c.post("/api/jobs", json=canary_job(canary_value("retention"), count=2)).json()
        assert wait_status(c, job["id"], ("complete", "failed"))["status"] == "complete"
        work = WorkDirs(server.data_dir / "jobs").of(job["id"])  # named by a keyed hash of the id
        assert (work / "job.toml").is_file()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.get(f"/api/jobs/{job['id']}").status_code == 200:
            time.sleep(0.2)
        assert c.get(f"/api/jobs/{job['id']}").status_code == 404
        assert c.post(f"/api/jobs/{job['id']}/cancel", json={}).status_code == 404
        assert not work.exists()
        assert b"retention: 1 finished job(s)" in server.stderr.read_bytes()
    finally:
        server.stop()
