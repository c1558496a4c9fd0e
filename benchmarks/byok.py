"""Per-file state cost with and without bring-your-own-key sealing (docs/byok.md): 20,000 files.

The same export as ``scale.py`` (10,000 recordings x 2 artifacts of 100-300 bytes from the
``example`` source into the local sink, fsync off, 8 transfers), once with a clear state and once
with every job sealed under a local key file (AES-256-GCM per sealed value, HMAC-SHA256 keyed
hashes; a KMS key costs the same per file: it is called once per job), then a job stopped after
~19,000 files and resumed, on each backend asked for.

    .venv/bin/python benchmarks/byok.py [--recordings 10000] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import Backend, run  # noqa: E402

from portshift.key_providers import LocalKeyFile  # noqa: E402
from portshift.plugins import load_plugins  # noqa: E402
from portshift.state import State  # noqa: E402


class KeyedBackend(Backend):
    """Opens the state as ``Backend`` does, sealing new jobs when a key is set."""

    key: LocalKeyFile | None = None

    def open(self, target: str) -> State:
        state = super().open(target)
        if self.key is not None:
            state.seals.use(self.key)
        return state


def measure(args: argparse.Namespace, work: Path, backend: KeyedBackend, sealed: bool) -> dict[str, float]:
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
    shutil.rmtree(work / "out")
    doc["sink"]["path"] = str(work / "out2")
    again = backend.new()
    n1 = run(doc, backend, again, stop_after=files - 1000)[1]
    t2, n2, _, status2 = run(doc, backend, again)
    assert status2 == "complete" and n1 + n2 <= files + 2 * args.transfers, (status2, n1, n2)
    shutil.rmtree(work / "out2")
    label = "sealed" if sealed else "clear "
    print(
        f"{label}: {1000 * t / n:.2f} ms per file ({n / t:.0f} files/s); state writes {1000 * db_t / n:.3f} ms per file "
        f"(summed over threads); {size / n:.0f} bytes per file; resume of {n1} done: {t2:.1f} s",
        flush=True,
    )
    return {"per_file": t / n, "writes": db_t / n, "size": size / n, "resume": t2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recordings", type=int, default=10_000)
    ap.add_argument("--transfers", type=int, default=8)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = ap.parse_args()
    load_plugins()
    for kind in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        work = Path(tempfile.mkdtemp(prefix="portshift-bench-byok-"))
        work.chmod(0o755)
        key = work / "state.key"
        key.write_text(base64.b64encode(os.urandom(32)).decode())
        key.chmod(0o600)
        print(f"--- state: {kind}", flush=True)
        backend = KeyedBackend(kind, work)
        try:
            clear = measure(args, work, backend, sealed=False)
            backend.key = LocalKeyFile(str(key))
            sealed = measure(args, work, backend, sealed=True)
        finally:
            backend.close()
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"sealed / clear: {sealed['per_file'] / clear['per_file']:.2f}x per file, "
            f"{sealed['writes'] / clear['writes']:.2f}x state writes, {sealed['size'] / clear['size']:.2f}x size, "
            f"{sealed['resume'] / clear['resume']:.2f}x resume",
            flush=True,
        )


if __name__ == "__main__":
    main()
