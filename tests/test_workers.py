"""Many workers on one job (docs/scaling.md): real `portshift run --workers N` and `portshift
worker` processes against the Chorus simulator over HTTPS, sharing the job through the state
(SQLite, and the tests' own PostgreSQL over verified TLS).

- the job is planned and listed once, every call is exported exactly once, one manifest that
  `sha256sum -c` verifies;
- workers killed with SIGKILL at seeded moments (the lister and the manifest writer included)
  and started again: nothing lost, nothing recorded twice, the manifest verifies.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .conftest import StateBackend
from .support import PORTSHIFT, sha256sum_check

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

TOKEN = "workers-" + "w" * 24
NOW = datetime.now(timezone.utc).replace(microsecond=0)
START = NOW - timedelta(days=30)
SINCE, UNTIL = (START - timedelta(days=1)).date().isoformat(), NOW.date().isoformat()


def simulator(calls: int, faults: object = None) -> chorus.ChorusSimulator:
    spec = chorus.TenantSpec(
        calls=calls,
        seed=16,
        start=START,
        end=NOW - timedelta(days=1, hours=1),
        media_size=8_000,
        unprocessed_ratio=0.0,
        no_show_ratio=0.0,
        zero_duration_ratio=0.0,
        private_ratio=0.0,
        other_type_ratio=0.0,
    )
    return chorus.ChorusSimulator(chorus.Tenant(spec), token=TOKEN, faults=faults)


@pytest.fixture
def sim() -> Iterator[object]:
    with simulator(int(os.environ.get("PORTSHIFT_WORKER_CALLS", "160"))) as s:  # the soak run: 2000
        yield s


def write_job(tmp_path: Path, sim: object, rate: float = 0) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 2\nretries = 1\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'  # type: ignore[attr-defined]
        f"requests_per_second = {rate:g}\nbackoff_base = 0.01\nbackoff_cap = 0.05\nretries = 1\n\n"
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    return job


def env(backend: StateBackend, lease: float = 30) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    out.update({"PORTSHIFT_CHORUS_TOKEN": TOKEN, "PORTSHIFT_RETRY_BASE": "0.01", "PORTSHIFT_LEASE": str(lease)})
    out.update(backend.env())
    return out


def conversations_fetched(sim: object) -> Counter[str]:
    stats = sim.stats  # type: ignore[attr-defined]
    with stats.lock:
        return Counter(
            path.split("/")[4]
            for server, _, path, _ in stats.seen
            if path.startswith("/api/v1/conversations/") and path.count("/") == 4
        )


def exported_calls(root: Path) -> Counter[str]:
    return Counter(p.parent.name for p in root.rglob("media.*"))


def test_run_with_four_workers_exports_every_call_exactly_once(tmp_path: Path, sim: object, state_backend: StateBackend) -> None:
    # paced so that the job lasts about 6 s (two API requests per call, shared by the workers):
    # long enough for the three worker processes to start and take part, however fast one is
    rate = max(20.0, 2 * len(sim.tenant.exportable()) / 6)  # type: ignore[attr-defined]
    job = write_job(tmp_path, sim, rate=rate)
    cmd = [*PORTSHIFT, "run", "--config", str(job), "--state", state_backend.target, "--workers", "4"]
    cmd += ["--since", SINCE, "--until", UNTIL, "--no-progress", "--report", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(state_backend), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    calls = len(sim.tenant.exportable())  # type: ignore[attr-defined]
    assert report["status"] == "complete" and report["recordings"]["exported"] == calls
    root = tmp_path / "out" / report["export_root"]
    check = sha256sum_check(root)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert len(exported_calls(root)) == calls and set(exported_calls(root).values()) == {1}
    fetched = conversations_fetched(sim)
    assert len(fetched) == calls and max(fetched.values()) == 1, fetched.most_common(3)  # no call fetched twice
    with state_backend.open(create=False) as state:
        rows = state._rows("read", "select id, ended_at from workers where job_id = ?", [report["job_id"]])
        job_row = state.job(report["job_id"])
        assert job_row is not None and job_row.listed_count == calls and job_row.attempt == 1
    assert len(rows) == 4 and all(ended for _, ended in rows)  # four workers took part, each ended cleanly
    assert report["manifest"] and (tmp_path / "out" / report["manifest"]["key"]).is_file()


def wait_until(what: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _listed(backend: StateBackend) -> int:
    path = Path(backend.target)
    if not path.exists():
        return 0
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("select count(*) from recordings").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # not migrated yet


def _start_worker(job: Path, backend: StateBackend, lease: float, log: Path) -> subprocess.Popen[bytes]:
    cmd = [*PORTSHIFT, "worker", "--config", str(job), "--state", backend.target, "--since", SINCE, "--until", UNTIL]
    with log.open("ab") as f:
        return subprocess.Popen([*cmd, "--no-progress"], stdout=subprocess.DEVNULL, stderr=f, env=env(backend, lease))


@pytest.mark.parametrize("state_backend", ["sqlite"], indirect=True)
def test_workers_killed_at_random_finish_the_job_with_nothing_lost_or_doubled(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    kills = int(os.environ.get("PORTSHIFT_WORKER_KILLS", "6"))
    slow = chorus.Faults(slow=chorus.Fault(ratio=1.0, times=-1), slow_seconds=0.02)  # kills land mid-transfer
    with simulator(int(os.environ.get("PORTSHIFT_WORKER_CALLS", "160")), slow) as sim:
        job = write_job(tmp_path, sim)
        rng = random.Random(1604)
        log = tmp_path / "workers.log"
        procs = [_start_worker(job, state_backend, 2.0, log)]
        wait_until(lambda: _listed(state_backend) > 0)  # the first worker planned the job and is listing
        procs += [_start_worker(job, state_backend, 2.0, log) for _ in range(3)]
        procs[0].send_signal(signal.SIGKILL)  # the planner, mid-listing: another worker lists again
        procs[0].wait()
        procs.append(_start_worker(job, state_backend, 2.0, log))
        killed = 1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.8))
            running = [p for p in procs if p.poll() is None]
            if not running:
                break
            if killed < kills:
                victim = rng.choice(running)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed += 1
                procs.append(_start_worker(job, state_backend, 2.0, log))
        assert all(p.poll() is not None for p in procs), "the workers did not finish in time"
        assert killed == kills
        final = subprocess.run(
            [*PORTSHIFT, "run", "--config", str(job), "--state", state_backend.target, "--since", SINCE, "--until", UNTIL,
             "--no-progress", "--report", "json"],
            capture_output=True, text=True, env=env(state_backend), timeout=120,
        )  # fmt: skip
        assert final.returncode == 0, final.stderr[-3000:]
        report = json.loads(final.stdout)
        calls = len(sim.tenant.exportable())  # type: ignore[attr-defined]
    assert report["status"] in ("complete", "up-to-date"), report
    assert report["manifest"] and report["manifest"]["sha256"]
    root = tmp_path / "out" / report["export_root"]
    check = sha256sum_check(root)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert len(exported_calls(root)) == calls  # 0 lost
    with state_backend.open(create=False) as state:
        counts = state.recording_counts(report["job_id"])
        manifests = [f["key"] for f in state.files(report["job_id"], "manifest")]
    assert counts == {"done": calls}, counts  # each recorded once (one row per call), none left to do
    assert manifests, "the manifest was written"


@pytest.mark.serial
def test_four_workers_share_the_request_ceiling_and_a_pause(tmp_path: Path) -> None:
    """The simulator enforces R requests/s; the job asks for R. Four workers together keep to it:
    the combined rate is at least 0.9 R and no 429 comes after the first 10 s."""
    rate = 20.0
    limit = chorus.Faults(rate_limit=rate, rate_limit_burst=2.0)
    backend = StateBackend("sqlite", str(tmp_path / "state.db"))
    with simulator(100, limit) as sim:
        job = write_job(tmp_path, sim)
        job.write_text(job.read_text().replace("requests_per_second = 0", f"requests_per_second = {rate}"))
        t0 = time.monotonic()
        cmd = [*PORTSHIFT, "run", "--config", str(job), "--state", backend.target, "--workers", "4"]
        cmd += ["--since", SINCE, "--until", UNTIL, "--no-progress", "--report", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(backend), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = sim.stats  # type: ignore[attr-defined]
        with stats.lock:
            times = sorted(stats.api_times)
            late_429s = [t - t0 for t in stats.rate_limited_times if t - t0 > 10]
    achieved = (len(times) - 1) / (times[-1] - times[0])
    print(f"{len(times)} API requests in {times[-1] - times[0]:.1f}s: {achieved:.1f}/s for {rate}/s")
    assert achieved >= 0.9 * rate, achieved
    assert late_429s == [], late_429s
