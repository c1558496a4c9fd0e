"""`portshift run --workers N` on one machine (portshift/cli/local_workers.py): the other workers
are forked from the first before it starts a thread, and started as `portshift worker` processes
when it cannot fork. Real processes against the Chorus simulator over HTTPS, SQLite state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import PORTSHIFT, sha256sum_check
from .test_workers import SINCE, TOKEN, UNTIL, exported_calls, simulator, write_job

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")

#: a `run --workers` whose main thread is not alone: it cannot fork, so it starts `portshift worker`s
WITH_A_THREAD = (
    "import sys, threading, time\n"
    "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    "from portshift.cli import main\n"
    "main(sys.argv[1:])\n"
)


def _env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    out["PORTSHIFT_RETRY_BASE"] = "0.01"
    return out


def _workers_of(state: Path, job_id: str) -> list[tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute("select id, ended_at from workers where job_id = ?", [job_id]).fetchall()


def _processes_naming(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a forked worker keeps its parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("start", ["forked", "portshift worker"])
def test_the_other_workers_take_part_with_the_credentials_from_stdin(tmp_path: Path, start: str) -> None:
    with simulator(60) as sim:
        calls = len(sim.tenant.exportable())
        job = write_job(tmp_path, sim, rate=max(20.0, 2 * calls / 4))  # about 4 s: every worker takes part
        state = tmp_path / "state.db"
        argv = ["run", "--config", str(job), "--state", str(state), "--workers", "3", "--secrets-from-stdin"]
        argv += ["--since", SINCE, "--until", UNTIL, "--no-progress", "--report", "json"]
        head = [sys.executable, "-c", WITH_A_THREAD] if start == "portshift worker" else PORTSHIFT
        secrets = json.dumps({"source": {"token": TOKEN}})  # nowhere else: not in the environment, not in a file
        proc = subprocess.run([*head, *argv], input=secrets, capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"3 worker processes on this machine (2 {start if start == 'forked' else 'started as `portshift worker`'}" in (
            proc.stderr
        ), proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["status"] == "complete" and report["recordings"]["exported"] == calls
        root = tmp_path / "out" / report["export_root"]
        assert sha256sum_check(root).returncode == 0
        assert len(exported_calls(root)) == calls and set(exported_calls(root).values()) == {1}
        rows = _workers_of(state, report["job_id"])
        assert len(rows) == 3 and all(ended for _, ended in rows), rows  # three took part, each ended cleanly
    assert TOKEN not in proc.stderr and TOKEN not in proc.stdout


def test_forked_workers_end_when_the_job_never_starts(tmp_path: Path) -> None:
    """The state cannot be opened: the first worker says so in one line, and the workers it
    forked (waiting for the job) end with it; none is left behind."""
    with simulator(5) as sim:
        job = write_job(tmp_path, sim)
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("x")
        argv = ["run", "--config", str(job), "--state", str(blocker / "state.db"), "--workers", "4", "--no-progress"]
        env = {**_env(), "PORTSHIFT_CHORUS_TOKEN": TOKEN}
        proc = subprocess.run([*PORTSHIFT, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("portshift: error:"), proc.stderr
    deadline = time.monotonic() + 10
    while (left := _processes_naming(str(job))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"worker processes left behind: {left}"


def test_local_workers_run_about_two_transfers_per_core_between_two_and_four() -> None:
    from portshift.cli.local_workers import local_worker_transfers

    # (workers, cores) -> transfers each: two per core over the machine, 2 at least, 4 at most
    cases = {(2, 2): 2, (4, 2): 2, (64, 2): 2, (2, 1): 2, (3, 4): 2, (2, 8): 4, (4, 8): 4, (8, 8): 2, (2, 64): 4}
    assert {case: local_worker_transfers(*case) for case in cases} == cases


@pytest.mark.parametrize(
    ("workers", "in_job", "on_command", "each"),
    [(2, None, None, 0), (2, 3, None, 3), (2, None, 5, 5), (1, None, None, 4)],
    ids=["two workers: by the cores", "the job file's", "--transfers", "one worker: the job's default 4"],
)
def test_local_workers_run_fewer_transfers_each_unless_told(
    tmp_path: Path, workers: int, in_job: int | None, on_command: int | None, each: int
) -> None:
    """`run --workers N` is there for the machine's cores: each worker runs about two transfers
    per core over the machine (N x 4 threads cost CPU per call on few cores), unless `[job]
    transfers` or `--transfers` says."""
    from portshift.cli.local_workers import local_worker_transfers, machine_cores

    each = each or local_worker_transfers(workers, machine_cores())  # 2 on these 2-core machines
    with simulator(12) as sim:
        job = write_job(tmp_path, sim, rate=8)  # about 3 s: the forked worker joins a job under way
        job.write_text(job.read_text().replace("transfers = 2\n", "" if in_job is None else f"transfers = {in_job}\n"))
        argv = ["run", "--config", str(job), "--state", str(tmp_path / "state.db"), "--workers", str(workers)]
        argv += ["--since", SINCE, "--until", UNTIL, "--no-progress", "--log-level", "debug"]
        argv += ["--transfers", str(on_command)] if on_command else []
        env = {**_env(), "PORTSHIFT_CHORUS_TOKEN": TOKEN}
        proc = subprocess.run([*PORTSHIFT, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "transfers in this process" in line]
    assert len(said) == workers and all(f": {each} transfers in this process" in line for line in said), said
    if workers > 1:
        assert f"{workers} worker processes on this machine (1 forked from this one), {each} transfers each" in proc.stderr


def test_the_state_backend_is_imported_before_the_workers_are_forked() -> None:
    """`import_backend` (called by `run --workers` before it forks): the module that opens the
    state is imported once in the first process, not in every copy of it."""
    code = (
        "import sys\n"
        "import portshift.state as state\n"
        "assert 'portshift.state.sqlite' not in sys.modules\n"
        "state.import_backend('x.db')\n"
        "assert 'portshift.state.sqlite' in sys.modules and 'portshift.state.postgres' not in sys.modules\n"
        "state.import_backend('postgresql://portshift@db.example.com/portshift')\n"
        "assert 'portshift.state.postgres' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
