"""Per-file overhead at scale: 20,000 tiny artifacts.

Exports 10,000 recordings x 2 artifacts (20,000 files of ~100-300 bytes) from the built-in
`example` source into the local sink (fsync off: we measure portshift, not the disk), then:
- state DB time per file (the whole run divided by files, and the share spent in state writes),
- state DB size per file,
- the time to resume a job with 19,000 files already done (must not re-transfer anything done).

With ``--backend both`` the same runs go to a SQLite file and then to a PostgreSQL database (a
server started here exactly as the tests start theirs: 127.0.0.1, TLS 1.3 with a test CA,
scram-sha-256; ``fsync=off`` on the server, like ``fsync = false`` on the sink; statements not
logged).

    .venv/bin/python benchmarks/scale.py [--recordings 10000] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portshift import hookimpl  # noqa: E402
from portshift.config import load_job  # noqa: E402
from portshift.pipeline import Runner, RunRequest  # noqa: E402
from portshift.plugins import load_plugins, pm  # noqa: E402
from portshift.secrets import Secret  # noqa: E402
from portshift.state import State, open_state  # noqa: E402


class Counter:
    def __init__(self, stop_after: int | None, cancel: threading.Event) -> None:
        self.n = 0
        self.stop_after = stop_after
        self.cancel = cancel
        self.lock = threading.Lock()

    @hookimpl
    def file_exported(self, job, file) -> None:  # noqa: ANN001
        with self.lock:
            self.n += 1
            if self.stop_after is not None and self.n >= self.stop_after:
                self.cancel.set()


class Backend:
    """Opens fresh state for each phase: a new SQLite file, or a new PostgreSQL database."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.work, self.server, self.n = kind, work, None, 0
        if kind == "postgres":
            import trustme

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from pg_server import start_server

            ca = trustme.CA()
            pem = work / "ca.pem"
            ca.cert_pem.write_to_path(str(pem))
            # as a production server runs: statements not logged (the tests log them all)
            self.server = start_server(ca, pem, settings={"log_statement": "'none'", "log_connections": "off"})

    def new(self) -> str:
        self.n += 1
        if self.server is None:
            return str(self.work / f"state-{self.n}.db")
        return self.server.url(self.server.new_database())

    def open(self, target: str) -> State:
        password = Secret(self.server.password, "password") if self.server else None
        return open_state(target, password=password)

    def size(self, target: str) -> int:
        if self.server is None:
            return sum(p.stat().st_size for p in self.work.glob(Path(target).name + "*") if p.is_file())
        with self.open(target) as state:
            return int(
                state.conn.execute(  # type: ignore[attr-defined]
                    "select sum(pg_total_relation_size(c.oid)) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = 'public' and c.relkind = 'r'"
                ).fetchone()[0]
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()


def run(doc: dict, backend: Backend, target: str, stop_after: int | None = None) -> tuple[float, int, float, str]:
    cancel = threading.Event()
    counter = Counter(stop_after, cancel)
    pm.register(counter, name=f"bench-counter-{time.monotonic()}")
    state = backend.open(target)
    timed = {"t": 0.0}
    original = state.add_file

    def add_file(*a, **k):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            timed["t"] += time.perf_counter() - t0

    state.add_file = add_file  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        result = Runner(load_job(None, doc=doc), state, cancel=cancel, retry_base=0).run(RunRequest())
        elapsed = time.perf_counter() - t0
    finally:
        state.close()
        pm.unregister(counter)
    return elapsed, counter.n, timed["t"], result.status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recordings", type=int, default=10_000)
    ap.add_argument("--transfers", type=int, default=8)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = ap.parse_args()
    load_plugins()
    for kind in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        work = Path(tempfile.mkdtemp(prefix="portshift-bench-scale-"))
        work.chmod(0o755)
        print(f"--- state: {kind}")
        backend = Backend(kind, work)
        try:
            measure(args, work, backend)
        finally:
            backend.close()
            shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path, backend: Backend) -> None:
    files = 2 * args.recordings
    doc = {
        "job": {"transfers": args.transfers},
        "source": {"type": "example", "count": args.recordings, "media_size": 100, "every_minutes": 10},
        "sink": {"type": "local", "path": str(work / "out"), "fsync": False},
    }
    full = backend.new()
    t, n, db_t, status = run(doc, backend, full)
    assert status == "complete" and n == files, (status, n)
    size = backend.size(full)
    print(f"full export: {n} files in {t:.1f} s = {1000 * t / n:.2f} ms per file ({n / t:.0f} files/s)")
    print(f"  state writes: {1000 * db_t / n:.3f} ms per file ({100 * db_t / t:.0f}% of wall time, summed over threads)")
    print(f"  state DB size: {size / 1024:.0f} KiB = {size / n:.0f} bytes per file")
    shutil.rmtree(work / "out")

    done_target = files - 1000
    doc["sink"]["path"] = str(work / "out2")
    again = backend.new()
    t1, n1, _, status1 = run(doc, backend, again, stop_after=done_target)
    assert status1 == "interrupted", status1
    t2, n2, _, status2 = run(doc, backend, again)
    assert status2 == "complete", status2
    print(
        f"resume: {n1} files done before the stop; the re-run exported {n2} files in {t2:.1f} s "
        f"(re-transferred nothing done: {'yes' if n1 + n2 <= files + 2 * args.transfers else 'NO'})"
    )


if __name__ == "__main__":
    main()
