"""A worker that starts after the job it was started for is complete (a slow pod, the last of
`run --workers N` on a fast job) finds nothing left to claim and exits: it must not plan the same
window again and export every call a second time (issue 16)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from portshift.testing import PORTSHIFT

from .conftest import StateBackend
from .test_workers import SINCE, UNTIL, conversations_fetched, env, simulator, write_job


@pytest.fixture
def sim() -> Iterator[object]:
    with simulator(40) as s:
        yield s


def test_a_worker_started_after_the_job_ended_exits_without_a_second_export(
    tmp_path: Path, sim: object, state_backend: StateBackend
) -> None:
    job = write_job(tmp_path, sim)
    run = [*PORTSHIFT, "run", "--config", str(job), "--state", state_backend.target]
    first = subprocess.run(
        [*run, "--since", SINCE, "--until", UNTIL, "--no-progress", "--report", "json"],
        capture_output=True, text=True, env=env(state_backend), timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["status"] == "complete"
    fetched = sum(conversations_fetched(sim).values())
    window = report["window"]
    late = subprocess.run(
        [*PORTSHIFT, "worker", "--config", str(job), "--state", state_backend.target, "--no-progress"]
        + ["--since", window["start"], "--until", window["end"]],
        capture_output=True, text=True, env=env(state_backend), timeout=300,
    )  # fmt: skip
    assert late.returncode == 0, late.stderr[-3000:]
    assert "already complete" in late.stdout + late.stderr
    assert sum(conversations_fetched(sim).values()) == fetched, "the late worker exported the calls again"
    with state_backend.open(create=False) as state:
        assert len(state.jobs()) == 1
    # `run` itself, asked for the same window again, is a new export on purpose (rule 4)
    again = subprocess.run(
        [*run, "--since", SINCE, "--until", UNTIL, "--no-progress", "--report", "json"],
        capture_output=True, text=True, env=env(state_backend), timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout)["job_id"] != report["job_id"]
