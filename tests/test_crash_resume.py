"""Crash and resume: `portshift run` is SIGKILLed at seeded points, then re-run.

After every crash and re-run: the manifest lists every expected file exactly once, every listed
hash matches the stored file, GNU `sha256sum -c` passes, nothing else lies under the export root,
and the state is sound (`PRAGMA integrity_check` of a SQLite file; one complete job either way).
Every kill point runs against both state backends: a SQLite file and a PostgreSQL database.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .conftest import StateBackend
from .support import PORTSHIFT, files_under, manifest_paths, sha256sum_check

#: `make soak` (PORTSHIFT_SOAK=1): a larger export and many more kill points
SOAK = os.environ.get("PORTSHIFT_SOAK", "") not in ("", "0")
CALLS = 1000 if SOAK else 200
PER_PHASE = 12 if SOAK else 0
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def fault_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "portshift_faults.py").write_text((HERE / "fault_plugins" / "portshift_faults.py").read_text())
    info = site / "portshift_faults-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-faults\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\nfaults = portshift_faults\n")
    return site


def kill_points(seed: int = 20261129) -> list[str]:
    rng = random.Random(seed)
    points = ["manifest:1", "list:1", f"list:{CALLS}"]
    for phase, count in (("download", 5), ("upload", 5), ("committed", 4), ("recorded", 4)):
        points += [f"{phase}:{rng.randint(1, 2 * CALLS)}" for _ in range(count + PER_PHASE)]
    if SOAK:
        points += [f"list:{rng.randint(2, CALLS)}" for _ in range(PER_PHASE)]
    return points


def run(job: Path, state: StateBackend, site: Path, kill: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "PORTSHIFT_LOAD_PLUGINS": "portshift-faults", **state.env()}
    env.pop("PORTSHIFT_TEST_KILL", None)
    if kill:
        env["PORTSHIFT_TEST_KILL"] = kill
    return subprocess.run(
        [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("kill", kill_points())
def test_killed_run_resumes_to_a_complete_verifiable_export(
    tmp_path: Path, fault_site: Path, kill: str, state_backend: StateBackend
) -> None:
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 4\n\n[source]\ntype = "faulty-example"\ncount = {CALLS}\nmedia_size = 3000\n'
        f'chunk_size = 1024\nevery_minutes = 30\n\n[sink]\ntype = "faulty-local"\npath = "{out}"\nfsync = false\n'
    )
    state = state_backend
    crashed = run(job, state, fault_site, kill)
    assert crashed.returncode == -signal.SIGKILL, f"{kill}: expected a SIGKILL, got {crashed.returncode}: {crashed.stderr}"
    assert not list(out.glob("*/portshift-manifest.txt")), "a run killed before its end left a manifest"
    resumed = run(job, state, fault_site, None)
    assert resumed.returncode == 0, resumed.stderr
    roots = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(roots) == 1, f"one export root expected, found {roots}"
    root = roots[0]
    listed = manifest_paths(root)
    lines = [ln for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == len(listed), "a file is listed twice"
    assert len(listed) == 2 * CALLS + 1  # media + metadata per call, plus the JSON index
    check = sha256sum_check(root)
    assert check.returncode == 0, check.stdout[-2000:]
    leftovers = files_under(root) - listed - {"portshift-manifest.txt"}
    assert not leftovers, f"files under the root that the manifest does not list: {sorted(leftovers)[:5]}"
    if state.kind == "sqlite":
        with sqlite3.connect(state.target) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with state.open(create=False) as opened:
        jobs = opened.jobs()
        assert [j.status.value for j in jobs] == ["complete"]
        assert opened.totals(jobs[0].id)[0] == jobs[0].file_count == 2 * CALLS  # media + metadata per call
        assert opened.recording_counts(jobs[0].id) == {"done": CALLS}
