"""The local sink's destination problems are one line each, found before or at the first write:
a path that is a file (refused when the job file is read: exit 2, nothing created), a folder
this user cannot write to (``check`` exit 2; ``run`` stops at the first file, never file by
file), a read-only file system (a hint about remounting, never "free space")."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portshift.default_plugins.local_sink import LocalOptions, LocalSink
from portshift.errors import ConfigError, ExitCode

from .support import PORTSHIFT

#: as root, drop the capability that lets root write anywhere, so permissions apply for real
AS_USER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
needs_setpriv = pytest.mark.skipif(bool(AS_USER) and shutil.which("setpriv") is None, reason="needs setpriv as root")


def job_file(tmp: Path, out: Path, count: int = 6) -> Path:
    job = tmp / "job.toml"
    job.write_text(f'[source]\ntype = "example"\ncount = {count}\nmedia_size = 1000\n\n[sink]\ntype = "local"\npath = "{out}"\n')
    return job


def portshift(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *PORTSHIFT, *args], capture_output=True, text=True, timeout=120)


def test_a_path_that_is_a_file_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    out = tmp_path / "export.txt"
    out.write_text("a file\n")
    job, state = job_file(tmp_path, out), tmp_path / "state.db"
    for command in (["check"], ["run", "--state", str(state)]):
        r = portshift(*command, "--config", str(job))
        assert r.returncode == ExitCode.USAGE, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "is a file, not a folder" in lines[0], r.stderr
    assert not state.exists() and out.read_text() == "a file\n"


@needs_setpriv
def test_a_folder_that_refuses_writes_is_one_line_at_check_and_stops_run_at_once(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    out.mkdir()
    out.chmod(0o555)
    job, state = job_file(tmp_path, out), tmp_path / "state.db"
    try:
        checked = portshift("check", "--config", str(job), prefix=AS_USER)
        ran = portshift("run", "--config", str(job), "--state", str(state), "--no-progress", prefix=AS_USER)
    finally:
        out.chmod(0o755)
    # the sink raises ConfigError (exit 2); `portshift check` itself still exits 5 for any failed
    # part (cli/check_cmd.py, issue 14), which is the core's to change
    assert checked.returncode in (ExitCode.USAGE, ExitCode.FATAL), checked.stderr
    assert "[sink] path: cannot write into" in checked.stderr and "Permission denied" in checked.stderr
    # run: the sink's check() refuses before anything is listed: one line, exit 2, no state
    lines = [ln for ln in ran.stderr.splitlines() if ln.strip()]
    assert ran.returncode == ExitCode.USAGE, ran.stderr
    assert len(lines) == 1 and "[sink] path: cannot write into" in lines[0] and "Permission denied" in lines[0], ran.stderr
    assert "free space" not in ran.stderr and not state.exists() and list(out.iterdir()) == []


@needs_setpriv
def test_a_folder_that_starts_refusing_writes_mid_run_stops_at_the_first_file(tmp_path: Path) -> None:
    """Past check(), a refused write is fatal at once (DestinationNotWritable), not one failure
    per recording: the put raises it, the job stops."""
    from portshift.default_plugins.local_sink import DestinationNotWritable

    out = tmp_path / "dest"
    out.mkdir()
    sink = LocalSink(LocalOptions(path=out))
    sink.check()
    (out / "job").mkdir(mode=0o555)
    script = (
        "from portshift.default_plugins.local_sink import *; from portshift.hashing import HashingStream as H\n"
        f"s = LocalSink(LocalOptions(path='{out}'))\n"
        "try:\n    s.put('job/a.bin', H(iter([b'x'])), 1)\nexcept Exception as e:\n    print(type(e).__name__, '|', e)\n"
    )
    r = subprocess.run([*AS_USER, PORTSHIFT[0], "-c", script], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith(f"{DestinationNotWritable.__name__} | put: cannot write"), r.stdout + r.stderr
    assert "Permission denied" in r.stdout and "free space" not in r.stdout


def test_check_refuses_a_parent_that_cannot_hold_the_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        LocalSink(LocalOptions(path=blocker / "a" / "b")).check()
    LocalSink(LocalOptions(path=tmp_path / "new" / "dest")).check()  # a creatable folder passes
    assert not (tmp_path / "new").exists(), "check creates nothing"


def _can_mount() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
def test_a_read_only_file_system_says_read_only_not_free_space(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    script = (
        f'mount -t tmpfs -o ro tmpfs "{out}" && '
        f'"$@" -c "from portshift.default_plugins.local_sink import *; from portshift.hashing import HashingStream as H\n'
        f"s = LocalSink(LocalOptions(path='{out}'))\n"
        f"try:\n    s.check()\nexcept Exception as e:\n    print('check', type(e).__name__, e)\n"
        f"try:\n    s.put('a/b.bin', H(iter([b'x'])), 1)\nexcept Exception as e:\n    print('put', type(e).__name__, e)\n\""
    )
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", PORTSHIFT[0]], capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("check ConfigError") and "Read-only file system" in lines[0], r.stdout + r.stderr
    assert lines[1].startswith("put DestinationNotWritable") and "read-only" in lines[1], r.stdout + r.stderr
    assert "free space" not in r.stdout


def test_destination_not_writable_is_a_configuration_error() -> None:
    from portshift.default_plugins.local_sink import DestinationNotWritable

    assert DestinationNotWritable("x").exit_code == ExitCode.USAGE and not DestinationNotWritable("x").retryable
