"""Issue 22 end to end: a call still processing at run 1 is pending, not lost; once Chorus has
finished it, run 2 — the same job file with ``--since last``, as a schedule runs it — exports it.
Real ``portshift run`` subprocesses against the simulator, ``--report json`` read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from portshift_source_chorus.simulator import ChorusSimulator, Tenant, TenantSpec

from .conftest import CANARY

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def recent() -> Iterator[ChorusSimulator]:
    """A tenant whose calls happened over the last 20 days, a third of them not processed yet."""
    spec = TenantSpec(
        calls=24, seed=9, start=NOW - timedelta(days=20), end=NOW - timedelta(hours=1), media_size=2048, unprocessed_ratio=0.3
    )
    with ChorusSimulator(Tenant(spec), token=CANARY) as sim:
        yield sim


def run(job: Path, state: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update(PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus", PORTSHIFT_CHORUS_TOKEN=CANARY)
    argv = [sys.executable, "-m", "portshift", "run", "--config", str(job), "--state", str(state), "--no-progress"]
    r = subprocess.run([*argv, "--report", "json", *args], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_a_call_processing_at_run_1_is_exported_by_run_2s_since_last(recent: ChorusSimulator, tmp_path: Path) -> None:
    sim = recent
    out, state, job = tmp_path / "export", tmp_path / "state.db", tmp_path / "job.toml"
    job.write_text(
        '[job]\ntransfers = 2\n\n[source]\ntype = "chorus"\n'
        f'base_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
        "requests_per_second = 0\nbackoff_base = 0.01\nbackoff_cap = 0.05\n\n"
        f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
    )
    outcomes = sim.tenant.outcomes(NOW - timedelta(days=21), NOW)
    processing = sorted(cid for cid, o in outcomes.items() if o.startswith("pending:"))
    exported = sorted(cid for cid, o in outcomes.items() if o == "export")
    assert processing and exported

    first = run(job, state, "--since", (NOW - timedelta(days=21)).date().isoformat())
    assert first["status"] == "complete"
    assert sorted(p["recording_id"] for p in first["pending"]) == processing  # type: ignore[union-attr]
    assert {p["reason"] for p in first["pending"]} <= {"processing", "live", "scheduled"}  # type: ignore[union-attr]
    assert first["recordings"]["exported"] == len(exported)  # type: ignore[index]
    root1 = out / str(first["export_root"])
    assert not {p.parent.name for p in root1.rglob("media.*")} & set(processing)

    finished = sim.tenant.finish_processing()  # Chorus finishes them between the two runs
    assert set(processing) <= set(finished)
    second = run(job, state, "--since", "last")
    assert second["status"] == "complete" and not second["pending"]
    root2 = out / str(second["export_root"])
    got = {p.parent.name for p in root2.rglob("media.*")}
    assert set(processing) <= got, f"still not exported: {set(processing) - got}"
    # the earlier job's calls are not exported twice
    assert not got & set(exported)
    assert sim.stats.writes == []


def test_the_state_keeps_ids_times_and_types_only_with_every_opt_in_artifact(tmp_path: Path) -> None:
    """Summaries, action items and scorecards go to the sink, never into portshift's state: no
    participant, subject, summary or scorecard content in the state DB (and its WAL)."""
    spec = TenantSpec(
        calls=16,
        seed=4,
        start=NOW - timedelta(days=10),
        end=NOW - timedelta(hours=1),
        media_size=1024,
        summary_ratio=1.0,
        scorecard_ratio=1.0,
        unprocessed_ratio=0,
    )
    with ChorusSimulator(Tenant(spec), token=CANARY) as sim:
        out, state, job = tmp_path / "export", tmp_path / "state.db", tmp_path / "job.toml"
        job.write_text(
            '[job]\ntransfers = 2\n\n[source]\ntype = "chorus"\n'
            f'base_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\nrequests_per_second = 0\n'
            'artifacts = ["media", "transcript", "captions", "metadata", "summary", "action_items", "scorecards"]\n\n'
            f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
        )
        report = run(job, state, "--since", (NOW - timedelta(days=11)).date().isoformat())
        assert report["status"] == "complete" and report["recordings"]["exported"] > 0  # type: ignore[index]
        root = out / str(report["export_root"])
        assert list(root.rglob("summary.json")) and list(root.rglob("action_items.json")) and list(root.rglob("scorecards.json"))
        content: set[str] = set()
        for c in sim.tenant.calls:
            item = sim.tenant.engagement(c)
            content.add(str(item["subject"]))
            for person in sim.tenant.participants(c):
                content |= {str(person["name"]), str(person["email"])}
            summary = sim.tenant.summary(c)
            if summary:
                content |= {summary[0], *summary[1]}
        for card in sim.tenant.scorecards():
            content.add(json.dumps(card["attributes"]))
        # the control: these strings are what the exported files hold (the sweep can find them)
        exported = b"".join(p.read_bytes() for p in root.rglob("*.json"))
        assert sum(text.encode() in exported for text in content) > len(content) // 2
        blobs = {p.name: p.read_bytes() for p in tmp_path.rglob("state.db*") if p.is_file()}
        assert "state.db" in blobs
        leaks = [(name, text) for name, blob in blobs.items() for text in content if text.encode() in blob]
        assert not leaks, leaks[:5]
        assert sim.stats.writes == []
