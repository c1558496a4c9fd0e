"""Local faults: a full disk under the destination or the state DB, a read-only state DB, the
destination vanishing mid-run. Each ends with one clear line, a documented exit code, a state DB
that passes `PRAGMA integrity_check`, and a re-run that finishes the job once the fault is gone."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from portshift.errors import ExitCode

from .support import PORTSHIFT, plugin, run_job, sha256sum_check


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m)")


def job_file(tmp: Path, out: Path, count: int = 20, media_size: int = 200_000) -> Path:
    job = tmp / "job.toml"
    job.write_text(
        f'[source]\ntype = "example"\ncount = {count}\nmedia_size = {media_size}\n\n[sink]\ntype = "local"\npath = "{out}"\n'
    )
    return job


def run_in_tmpfs(mountpoint: Path, size: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run portshift with a tiny tmpfs mounted at ``mountpoint`` (in a private mount namespace)."""
    mountpoint.mkdir(exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "{mountpoint}" && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *PORTSHIFT, *args], capture_output=True, text=True, timeout=120
    )


@needs_tmpfs
def test_a_full_destination_stops_the_job_cleanly_and_resumes_when_there_is_room(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    out.mkdir()
    job = job_file(tmp_path, out)
    state = tmp_path / "state.db"
    run = " ".join([*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"])
    # one mount namespace for the whole story: the disk fills up, the run stops, the disk grows,
    # the same command finishes the job, and sha256sum checks it before the tmpfs goes away
    script = (
        f'mount -t tmpfs -o size=1m tmpfs "{out}" && '
        f"{run} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc; "
        f'mount -o remount,size=20m "{out}" && '
        f"{run} > {tmp_path}/second.out 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc; "
        f'cd "$(dirname "$(ls {out}/*/portshift-manifest.txt)")" && sha256sum -c --strict --quiet portshift-manifest.txt'
    )
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=180)
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == str(ExitCode.FATAL), first_err
    assert "No space left on device" in first_err and "re-run the same command to resume" in first_err
    assert "Traceback" not in first_err
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    assert r.returncode == 0, f"sha256sum -c failed: {r.stdout} {r.stderr}"
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [row[0] for row in db.execute("select status from jobs")] == ["complete"]


@needs_tmpfs
def test_a_full_state_disk_stops_the_job_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    state_dir = tmp_path / "statefs"
    job = job_file(tmp_path, out, count=400, media_size=100)
    r = run_in_tmpfs(state_dir, "96k", ["run", "--config", str(job), "--state", str(state_dir / "s.db"), "--no-progress"])
    assert r.returncode in (ExitCode.FATAL, ExitCode.USAGE), r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("portshift: error:") or "state file" in ln]
    assert errors and "state file" in errors[-1] and ("full" in errors[-1] or "disk" in errors[-1]), r.stderr
    assert "Traceback" not in r.stderr


def test_a_read_only_state_file_is_refused_before_anything_is_exported(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    job = job_file(tmp_path, out, count=2)
    state = tmp_path / "ro" / "s.db"
    state.parent.mkdir()
    assert (
        run_job({"source": {"type": "example", "count": 1}, "sink": {"type": "local", "path": str(tmp_path / "o")}}, state).status
        == "complete"
    )
    state.chmod(0o444)
    state.parent.chmod(0o555)
    try:
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        r = subprocess.run(
            [*prefix, *PORTSHIFT, "run", "--config", str(job), "--state", str(state)], capture_output=True, text=True
        )
    finally:
        state.parent.chmod(0o755)
        state.chmod(0o644)
    assert r.returncode in (ExitCode.USAGE, ExitCode.FATAL), r.stderr
    assert "state file" in r.stderr and "readonly" in r.stderr.replace("read-only", "readonly").replace(" ", "")
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_the_destination_vanishing_stops_the_job_and_its_return_resumes_it(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    away = tmp_path / "unmounted"
    doc = {
        "job": {"transfers": 1},
        "source": {"type": "example", "count": 10, "media_size": 1000},
        "sink": {"type": "local", "path": str(out)},
    }
    seen: list[str] = []

    def on_file(job, file) -> None:  # noqa: ANN001
        seen.append(file.key)
        if len(seen) == 4:
            out.rename(away)  # the volume goes away

    with plugin("test-vanish", file_exported=on_file):
        first = run_job(doc, tmp_path / "s.db")
    assert first.status == "failed" and first.exit_code == ExitCode.FATAL
    assert "disappeared" in first.message
    assert not out.exists(), "the sink re-created a vanished destination"
    away.rename(out)  # the volume is back
    second = run_job(doc, tmp_path / "s.db")
    assert second.resumed and second.status == "complete" and second.files == 20
    assert sha256sum_check(out / second.export_root).returncode == 0
