"""Zero disk: a whole export, traced with strace, writes recording bytes nowhere but the
destination, and opens no file for writing outside the destination and the state DB."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import PORTSHIFT

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

OPEN_RE = re.compile(r'open(?:at|at2)?\((?:[^,]+, )?"([^"]+)", ([A-Z_|]+)')
WRITE_RE = re.compile(r"\b(?:write|pwrite64|writev|pwritev2?)\((\d+)<([^>]*)>")


def test_an_export_writes_only_to_the_destination_and_the_state_db(tmp_path: Path) -> None:
    out = tmp_path / "dest"
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    job = tmp_path / "job.toml"
    job.write_text(f'[source]\ntype = "example"\ncount = 5\nmedia_size = 300000\n\n[sink]\ntype = "local"\npath = "{out}"\n')
    cmd = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"]
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    subprocess.run([*PORTSHIFT, "plugins"], env=env, capture_output=True, check=True)  # warm byte-code caches
    trace = tmp_path / "trace.txt"
    r = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-o", str(trace), "-e", "trace=%file,write,pwrite64,writev", *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    allowed_prefixes = (str(out) + "/", str(state), str(state) + "-", str(state.parent / "state.db.locks") + "/")
    wrote_outside: list[str] = []
    opened_for_writing: list[str] = []
    content_writes = 0
    for line in trace.read_text().splitlines():
        m = OPEN_RE.search(line)
        if m and any(flag in m.group(2) for flag in ("O_WRONLY", "O_RDWR", "O_CREAT")) and "= -1" not in line:
            path = m.group(1)
            if not path.startswith(allowed_prefixes) and path not in ("/dev/null", "/dev/tty"):
                opened_for_writing.append(path)
        w = WRITE_RE.search(line)
        if w:
            target = w.group(2)
            if target.startswith(str(out) + "/"):
                content_writes += 1
            elif target.startswith(("pipe:", "socket:", "anon_inode:", "/dev/null", "/dev/pts", "/dev/tty")):
                pass
            elif target.startswith(allowed_prefixes):
                pass
            else:
                wrote_outside.append(line[:200])
    assert content_writes >= 5, "the trace did not see the export being written"
    assert not opened_for_writing, f"files opened for writing outside destination and state: {opened_for_writing[:10]}"
    assert not wrote_outside, f"writes outside destination and state: {wrote_outside[:10]}"
    assert not (tmp_path / "tmp").exists() or not any((tmp_path / "tmp").iterdir())
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*"))
