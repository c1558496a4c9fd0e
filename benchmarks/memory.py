"""Peak memory of `portshift run` does not grow with file size.

Exports one 64 MiB and one 2 GiB recording (the built-in `example` source, generated on the fly,
into the local sink, 4 parallel transfers) as real subprocesses, and reads each child's peak RSS
from the kernel (wait4 rusage). Targets: 2 GiB <= 1.25 x the 64 MiB figure, and below 250 MiB.

    .venv/bin/python benchmarks/memory.py [--big-mib 2048] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portshift.testing import PORTSHIFT

MIB = 1024 * 1024


def run(size: int, transfers: int, work: Path) -> tuple[float, float]:
    out = work / f"out-{size}"
    job = work / f"job-{size}.toml"
    job.write_text(
        f'[job]\ntransfers = {transfers}\n\n[source]\ntype = "example"\ncount = 1\nmedia_size = {size}\n'
        f'chunk_size = {1 * MIB}\n\n[sink]\ntype = "local"\npath = "{out}"\n'
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [*PORTSHIFT, "run", "--config", str(job), "--state", str(work / f"s-{size}.db"), "--no-progress", "--log-level=warning"],
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"portshift run failed for {size} bytes")
    shutil.rmtree(out, ignore_errors=True)
    return usage.ru_maxrss / 1024, elapsed  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-mib", type=int, default=64)
    ap.add_argument("--big-mib", type=int, default=2048)
    ap.add_argument("--transfers", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="portshift-bench-mem-"))
    try:
        small_rss, small_t = run(args.small_mib * MIB, args.transfers, work)
        big_rss, big_t = run(args.big_mib * MIB, args.transfers, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = big_rss / small_rss
    print(f"peak RSS, {args.small_mib} MiB recording: {small_rss:7.1f} MiB  ({small_t:5.1f} s)")
    print(
        f"peak RSS, {args.big_mib} MiB recording: {big_rss:7.1f} MiB  ({big_t:5.1f} s, "
        f"{args.big_mib / big_t:.0f} MiB/s through hash + local sink with fsync)"
    )
    print(f"ratio big/small: {ratio:.3f}  (target <= 1.25: {'met' if ratio <= 1.25 else 'MISSED'})")
    print(f"big below 250 MiB: {'met' if big_rss < 250 else 'MISSED'}")


if __name__ == "__main__":
    main()
