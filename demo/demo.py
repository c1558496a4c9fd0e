"""`make demo`: export a synthetic tenant into ./demo-export and verify it with GNU sha256sum.

With the Chorus plugin installed, the source is the Chorus simulator (a real HTTPS server on
127.0.0.1 with its own throw-away CA) and the export goes through the real Chorus plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-export"
PORTSHIFT = [sys.executable, "-m", "portshift"]


def run_job(job: str, env: dict[str, str], state: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="portshift-demo-"))
    job_file = work / "job.toml"
    job_file.write_text(job)
    print(f"$ portshift run --config {job_file} --state {state}", flush=True)
    rc = subprocess.call([*PORTSHIFT, "run", "--config", str(job_file), "--state", str(state)], env=env)
    if rc != 0:
        sys.exit(f"demo: portshift run failed with exit code {rc}")


def verify() -> None:
    roots = sorted(p.parent for p in OUT.glob("*/portshift-manifest.txt"))
    if not roots:
        sys.exit("demo: no manifest was written")
    root = roots[-1]
    print(f"$ cd {root} && sha256sum -c --quiet --strict portshift-manifest.txt", flush=True)
    rc = subprocess.call(["sha256sum", "-c", "--quiet", "--strict", "portshift-manifest.txt"], cwd=root)
    if rc != 0:
        sys.exit("demo: sha256sum -c FAILED")
    files = sum(1 for p in root.rglob("*") if p.is_file())
    print(f"\nsha256sum -c: all files OK. {files} files exported to {root}")
    print(f"  manifest: {root / 'portshift-manifest.txt'}")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    state = OUT.parent / ".demo-state.db"
    for p in state.parent.glob(".demo-state.db*"):
        if p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)
    env = dict(os.environ)
    try:
        import portshift_source_chorus  # noqa: F401
    except ImportError:
        print("demo: the Chorus plugin is not installed; exporting the built-in example tenant", flush=True)
        run_job(f'[source]\ntype = "example"\ncount = 36\n\n[sink]\ntype = "local"\npath = "{OUT}"\n', env, state)
    else:
        from demo_chorus import run_chorus_demo  # type: ignore[import-not-found]

        run_chorus_demo(OUT, state, env, run_job)
    verify()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
