"""CPU per call of two versions of portshift, alternating against one Chorus simulator.

The many-small-calls figure (benchmark 4) moves by a third between runs on these 2-core
machines, far more than one change to the per-call cost. This script resolves such a change: the
same job (``--calls`` calls, three files each, the local sink without fsync, no request
ceiling) is run by this checkout and by ``--old`` (another checkout of the repository, e.g. a
``git worktree`` of an older commit, run with this virtualenv and its code first on
``PYTHONPATH``), in alternating order, ``--pairs`` times; each run's CPU (user + system, of the
process and its workers, from ``wait4``) divided by the calls, and the median difference of the
pairs.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/chorus_cpu_ab.py --old /tmp/old [--calls 1000] [--pairs 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chorus_common import Simulator, child_env, portshift_run  # noqa: E402
from chorus_many_calls import END, SEED, START, tenant_with  # noqa: E402


def code_path(checkout: Path) -> str:
    """``PYTHONPATH`` that puts a checkout's core and built-in plugins first."""
    dirs = [checkout] + sorted(p for p in (checkout / "plugins").iterdir() if p.is_dir())
    return ":".join(str(d) for d in dirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the other checkout")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--transfers", type=int, default=4)
    ap.add_argument(
        "--dest", type=Path, metavar="DIR", help="make the export folder under DIR (e.g. /dev/shm: no file system noise)"
    )
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    engagements, ids = tenant_with(args.calls)
    work = Path(tempfile.mkdtemp(prefix="portshift-bench-ab-"))
    sim = Simulator.start(
        work, "--calls", str(engagements), "--seed", str(SEED), "--private", "0", "--media-size", str(256 * 1024),
        "--page-size", "100", "--start", START, "--end", END,
    )  # fmt: skip
    dest = Path(tempfile.mkdtemp(prefix="portshift-bench-ab-", dir=args.dest)) if args.dest else work
    out = dest / "export"
    job = work / "job.toml"
    job.write_text(
        f"[job]\nsince = {START}\nuntil = {END}\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca}"\n'
        f'token_file = "{sim.token_file}"\nartifacts = ["media", "transcript", "metadata"]\nrequests_per_second = 0\n\n'
        f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
    )
    cpu: dict[str, list[float]] = {"new": [], "old": []}
    user: dict[str, list[float]] = {"new": [], "old": []}  # without the kernel's share (file creation)
    try:
        for pair in range(args.pairs):
            for which in ("old", "new") if pair % 2 == 0 else ("new", "old"):
                env = child_env(PYTHONPATH=code_path(args.old if which == "old" else here))
                res = portshift_run(
                    job, work / f"{which}-{pair}.db", env=env, progress=False, transfers=args.transfers, workers=args.workers
                )
                per_call = 1000 * res.cpu / len(ids)
                cpu[which].append(per_call)
                user[which].append(1000 * (res.cpu - res.sys_cpu) / len(ids))
                print(
                    f"  pair {pair + 1}: {which}  {per_call:.2f} CPU-ms per call, {user[which][-1]:.2f} of it user "
                    f"({len(ids) / res.wall:.1f} calls/s)",
                    flush=True,
                )
                out.rename(dest / f"done-{which}-{pair}")
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    diffs = [n - o for n, o in zip(cpu["new"], cpu["old"])]
    print(
        f"\n{len(ids)} calls, --workers {args.workers} --transfers {args.transfers}: CPU-ms per call, median of {args.pairs}: "
        f"old {statistics.median(cpu['old']):.2f}, new {statistics.median(cpu['new']):.2f}; "
        f"new - old per pair: {', '.join(f'{d:+.2f}' for d in diffs)} (median {statistics.median(diffs):+.2f})"
    )
    diffs = [n - o for n, o in zip(user["new"], user["old"])]
    print(
        f"user CPU-ms per call (no kernel), median: old {statistics.median(user['old']):.2f}, "
        f"new {statistics.median(user['new']):.2f}; new - old per pair: {', '.join(f'{d:+.2f}' for d in diffs)} "
        f"(median {statistics.median(diffs):+.2f})"
    )


if __name__ == "__main__":
    main()
