"""A sealed job killed (SIGKILL) at seeded points of the crash-and-resume suite resumes to a
complete, verifiable export on both backends: resume finds what is done through the keyed hashes,
and the sinks' journal, sealed, is read back after the crash."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import StateBackend
from .support import PORTSHIFT, files_under, manifest_paths, sha256sum_check
from .test_byok import assert_absent, dump_of, key_file
from .test_byok_kms import fault_site  # noqa: F401 - the crash plugin as an installed distribution

CALLS = 40


def _run(job: Path, state: StateBackend, site: Path, kill: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "PG"))}
    env.update(PYTHONPATH=str(site), PORTSHIFT_LOAD_PLUGINS="portshift-faults", **state.env())
    if kill:
        env["PORTSHIFT_TEST_KILL"] = kill
    return subprocess.run(
        [*PORTSHIFT, "run", "--config", str(job), "--state", state.target, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("kill", ["list:7", "upload:9", "committed:23", "recorded:40", "manifest:1"])
def test_a_killed_sealed_job_resumes_to_a_verified_export(
    tmp_path: Path,
    fault_site: Path,  # noqa: F811
    kill: str,
    state_backend: StateBackend,
) -> None:
    out = tmp_path / "ZQXACMECORPORATION-out"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 4\n\n[source]\ntype = "faulty-example"\ncount = {CALLS}\nmedia_size = 3000\n'
        f'chunk_size = 1024\nevery_minutes = 30\nseed = 777\n\n[sink]\ntype = "faulty-local"\npath = "{out}"\nfsync = false\n\n'
        f'[state]\nkey = "file:{key_file(tmp_path)}"\n'
    )
    crashed = _run(job, state_backend, fault_site, kill)
    assert crashed.returncode == -signal.SIGKILL, f"{kill}: {crashed.returncode}: {crashed.stderr}"
    resumed = _run(job, state_backend, fault_site, None)
    assert resumed.returncode == 0, resumed.stderr
    [root] = [p for p in out.iterdir() if p.is_dir()]
    listed = manifest_paths(root)
    assert len(listed) == 2 * CALLS + 1 and sha256sum_check(root).returncode == 0
    assert not files_under(root) - listed - {"portshift-manifest.txt"}
    with state_backend.open(create=False) as state:
        [done] = state.jobs()
        assert done.status.value == "complete" and done.id == root.name and done.sink_location == str(out)
        assert state.recording_counts(done.id) == {"done": CALLS}
        assert state.journal_pending(done.id) == []
    digests = [ln.split("  ", 1)[0] for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert_absent(dump_of(state_backend), [*(f"ex0777{i:06d}" for i in range(CALLS)), *digests, out.name])


def test_several_workers_share_a_sealed_job(tmp_path: Path, state_backend: StateBackend) -> None:
    """`run --workers 3`: the planner makes the job's data key, every worker unwraps it from the
    state with the same key file; the export verifies and the state holds no customer name."""
    out = tmp_path / "ZQXACMECORPORATION-out"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 2\n\n[source]\ntype = "example"\ncount = 30\nmedia_size = 2000\nseed = 31\n\n'
        f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n\n[state]\nkey = "file:{key_file(tmp_path)}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "PG"))}
    env.update(PORTSHIFT_LOAD_PLUGINS="", **state_backend.env())
    r = subprocess.run(
        [*PORTSHIFT, "run", "--config", str(job), "--state", state_backend.target, "--workers", "3", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    [root] = [p for p in out.iterdir() if p.is_dir()]
    assert len(manifest_paths(root)) == 2 * 30 + 1 and sha256sum_check(root).returncode == 0
    with state_backend.open(create=False) as state:
        [done] = state.jobs()
        assert done.status.value == "complete" and done.sealed is None and done.sink_location == str(out)
        assert state.recording_counts(done.id) == {"done": 30}
        assert state._rows("read", "select count(*) from job_keys", []) == [(1,)]
    digests = [ln.split("  ", 1)[0] for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert_absent(dump_of(state_backend), [*(f"ex0031{i:06d}" for i in range(30)), *digests, out.name])
