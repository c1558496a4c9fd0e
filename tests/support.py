"""Helpers shared by the core tests (plain functions; fixtures live in the test modules)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from portshift import hookimpl
from portshift.config import load_job
from portshift.pipeline import Runner, RunRequest, RunResult
from portshift.plugins import load_plugins, pm
from portshift.state import State

PORTSHIFT = [sys.executable, "-m", "portshift"]


@contextlib.contextmanager
def plugin(
    name: str, *, sources: dict[str, type] | None = None, sinks: dict[str, type] | None = None, **hooks: Any
) -> Iterator[None]:
    """Register a throw-away plugin for the duration of a test."""
    load_plugins()

    class _Plugin:
        pass

    obj = _Plugin()
    if sources:
        obj.register_sources = hookimpl(lambda register: [register(k, v) for k, v in sources.items()])  # type: ignore[attr-defined]
    if sinks:
        obj.register_sinks = hookimpl(lambda register: [register(k, v) for k, v in sinks.items()])  # type: ignore[attr-defined]
    for hook_name, fn in hooks.items():
        setattr(obj, hook_name, hookimpl(fn))
    pm.register(obj, name=name)
    try:
        yield
    finally:
        pm.unregister(obj)


def run_job(
    doc: dict[str, Any], state_path: Any, req: RunRequest | None = None, cancel: threading.Event | None = None
) -> RunResult:
    """Run a job in-process; ``state_path`` is a state file or a conftest ``StateBackend``."""
    cfg = load_job(None, doc=doc)
    with state_path.open() if hasattr(state_path, "kind") else State.open(state_path) as state:
        return Runner(cfg, state, cancel=cancel, retry_base=0.0).run(req or RunRequest())


def sha256sum_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], cwd=root, capture_output=True, text=True)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def manifest_paths(root: Path) -> set[str]:
    lines = (root / "portshift-manifest.txt").read_text().splitlines()
    return {line.split("  ", 1)[1] for line in lines if line and not line.startswith("#")}
