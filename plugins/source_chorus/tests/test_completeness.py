"""Completeness against the source (issue 21), end to end with the HTTPS simulator: `portshift run`
as a subprocess counts the calls it did not export, per reason, in the manifest's inventory and in
`--report json`, and none of them in the files; private calls, which Chorus never lists, are in
neither and the verify output says so; a call that appears in the window afterwards is `new` to
`portshift verify ROOT --against-source --config job.toml` (exit 4)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from portshift_source_chorus.simulator import ChorusSimulator, Tenant, TenantSpec

from .conftest import CANARY, WINDOW
from .test_end_to_end import run_portshift


def _job(tmp_path: Path, sim: ChorusSimulator, out: Path) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\nsince = "{WINDOW.start.date().isoformat()}"\nuntil = "{WINDOW.end.date().isoformat()}"\n\n'
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
        "requests_per_second = 0\nbackoff_base = 0.01\nbackoff_cap = 0.05\nwindow_days = 30\n\n"
        f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
    )
    return job


def _expected(sim: ChorusSimulator) -> tuple[set[str], Counter[str], Counter[str], set[str]]:
    """From the tenant's truth: exported ids, skipped and pending counts per reason, private ids."""
    exported: set[str] = set()
    skipped: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    for cid, outcome in sim.tenant.outcomes(WINDOW.start, WINDOW.end).items():
        kind, _, reason = outcome.partition(":")
        hidden = sim.tenant.by_id[cid].hidden
        if kind == "pending":
            pending[reason] += 1
        elif kind == "skipped":
            skipped[reason] += 1
        elif kind == "export" and hidden:  # listed, then 403/404 for the token's user
            skipped[hidden] += 1
        else:
            exported.add(cid)
    private = {c.engagement_id for c in sim.tenant.calls if c.private and WINDOW.start <= c.started_at < WINDOW.end}
    return exported, skipped, pending, private


def test_calls_not_exported_are_counted_per_reason_and_a_call_added_later_is_new_to_verify(tmp_path: Path) -> None:
    spec = TenantSpec(
        calls=40,
        seed=21,
        media_size=2000,
        unprocessed_ratio=0.15,
        private_ratio=0.15,
        not_found_ratio=0.1,
        forbidden_ratio=0.1,
        other_type_ratio=0.0,
    )
    with ChorusSimulator(Tenant(spec), token=CANARY) as sim:
        exported, skipped, pending, private = _expected(sim)
        assert skipped["forbidden"] and skipped["not_found"] and sum(pending.values()) and private  # every case is met
        out, state = tmp_path / "export", tmp_path / "state.db"
        job = _job(tmp_path, sim, out)
        env = {"PORTSHIFT_CHORUS_TOKEN": CANARY}
        r = run_portshift(["run", "--config", str(job), "--state", str(state), "--report", "json", "--no-progress"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        (root,) = [p.parent for p in out.glob("*/portshift-manifest.txt")]

        # --report json: every call not exported, with its reason
        assert Counter(p["reason"] for p in report["skipped"]) == skipped
        assert Counter(p["reason"] for p in report["pending"]) == pending
        assert report["recordings"]["exported"] == len(exported)

        # the manifest's inventory: the same counts per reason, in the text header and the JSON index
        index = json.loads((root / "portshift-manifest.json").read_text())
        inventory = index["inventory"]
        listed = len(exported) + sum(skipped.values()) + sum(pending.values())
        assert inventory["listed"] == listed and inventory["exported"] == len(exported)
        assert inventory["skipped"] == dict(skipped) and inventory["pending"] == dict(pending)
        header = [ln for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln.startswith("#")]
        per_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
        assert f"# skipped: {sum(skipped.values())} ({per_reason})" in header, header
        assert f"# listed: {listed}" in header
        not_exported = {p["recording_id"]: p["reason"] for p in index["not_exported"]}
        assert set(not_exported) == {p["recording_id"] for p in report["skipped"] + report["pending"]}

        # ... and never in the files: no path, no manifest entry names them; private calls nowhere
        paths = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        in_files = {p.split("/")[3] for p in paths if p.count("/") >= 4}
        assert in_files == exported
        assert {f["recording_id"] for f in index["files"] if f.get("recording_id")} == exported
        manifest_text = (root / "portshift-manifest.txt").read_text() + (root / "portshift-manifest.json").read_text()
        assert not [cid for cid in private if cid in manifest_text]
        check = subprocess.run(["sha256sum", "--strict", "-c", "--quiet", "portshift-manifest.txt"], cwd=root)
        assert check.returncode == 0

        # the window listed again: the same calls, and the source says what it cannot see past
        same = run_portshift(["verify", str(root), "--against-source", "--config", str(job), "--json"], env)
        assert same.returncode == 0, same.stdout + same.stderr
        source = json.loads(same.stdout)["source"]
        assert source["new"] == [] and source["same_listing"] and source["listed_now"] == listed
        assert "private" in source["limits"] and "may not see" in source["limits"]

        # a call appears in the window afterwards (recorded later, or made visible): new, exit 4
        added = sim.tenant.add_call(
            date_time=int(WINDOW.start.timestamp()) + 86400,
            engagement_type="meeting",
            processing_state="done",
            private=False,
            hidden=None,
        )
        grown = run_portshift(["verify", str(root), "--against-source", "--config", str(job), "--json"], env)
        assert grown.returncode == 4, grown.stdout + grown.stderr
        source = json.loads(grown.stdout)["source"]
        assert source["new"] == [added] and source["gone"] == [] and not source["same_listing"]
        text = run_portshift(["verify", str(root), "--against-source", "--config", str(job)], env)
        assert text.returncode == 4 and added in text.stdout and "private" in text.stdout, text.stdout
