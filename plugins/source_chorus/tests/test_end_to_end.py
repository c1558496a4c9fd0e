"""`portshift run` as a real subprocess from the simulator (over HTTPS, with faults) into a local
folder; then GNU `sha256sum -c` in the export root and an independent comparison of every file
with the tenant's truth; then a sweep of every output for the token and the media links."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from portshift_source_chorus.options import DEFAULT_FIELDS
from portshift_source_chorus.simulator import ChorusSimulator, Fault, Faults

from .conftest import CANARY, EXT, WINDOW


def run_portshift(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update(PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus", PORTSHIFT_RETRY_BASE="0.01", **(env_extra or {}))
    try:
        return subprocess.run([sys.executable, "-m", "portshift", *args], capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"portshift {args[0]} did not finish; stderr ends with: {err[-3000:]}") from None


def write_job(tmp_path: Path, sim: ChorusSimulator, out: Path) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 4\nretries = 3\n"
        f'since = "{WINDOW.start.date().isoformat()}"\nuntil = "{WINDOW.end.date().isoformat()}"\n\n'
        '[source]\ntype = "chorus"\n'
        f'base_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
        "requests_per_second = 200\nmin_requests_per_second = 50\nburst = 4\nbackoff_base = 0.01\nbackoff_cap = 0.1\n"
        "window_days = 20\n\n"
        f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
    )
    return job


def test_portshift_run_exports_the_tenant_and_sha256sum_checks_it(sim: ChorusSimulator, tmp_path: Path) -> None:
    sim.configure(
        faults=Faults(
            throttle=Fault(ratio=0.15, times=1),
            retry_after="garbage",
            server_error=Fault(ratio=0.15, times=1),
            truncate=Fault(ratio=0.2, times=1, on=("media", "conversation")),
            expired_link=Fault(ratio=0.3, times=1, on=("media_api",)),
        )
    )
    out, state = tmp_path / "export", tmp_path / "state.db"
    job = write_job(tmp_path, sim, out)
    r = run_portshift(
        ["run", "--config", str(job), "--state", str(state), "--log-level", "debug", "--no-progress"],
        {"PORTSHIFT_CHORUS_TOKEN": CANARY},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "complete" in r.stdout
    assert sim.stats.throttled > 0 and sim.stats.statuses["media:403"] > 0  # the faults were met

    (root,) = [p.parent for p in out.glob("*/portshift-manifest.txt")]
    check = subprocess.run(["sha256sum", "--strict", "-c", "portshift-manifest.txt"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # independent of portshift: every visible call's files are exactly the tenant's
    t = sim.tenant
    expected = t.exportable(WINDOW.start, WINDOW.end)
    visible = [c for c in expected if not c.hidden]
    lines = [ln for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    listed = {ln.split("  ", 1)[1]: ln.split("  ", 1)[0] for ln in lines}
    assert len(listed) == 4 * len(visible) + 1  # four artifacts per call, and portshift-manifest.json
    for c in visible:
        d = c.started_at
        folder = root / f"{d:%Y}/{d:%m}/{d:%d}/{c.engagement_id}"
        media = folder / f"media.{EXT[c.content_type]}"
        assert hashlib.sha256(media.read_bytes()).hexdigest() == t.media_sha256(c.engagement_id)
        assert (folder / "transcript.json").read_bytes() == t.conversation_bytes(c.engagement_id, set(DEFAULT_FIELDS))
        assert json.loads((folder / "metadata.json").read_bytes()) == t.engagement(c)
        assert (folder / "captions.vtt").read_bytes().startswith(b"WEBVTT\n")
    for c in expected:
        if c.hidden:
            assert not list(root.rglob(f"*{c.engagement_id}*"))

    # the hidden calls are listed as skipped, with their reason
    job_id = root.name
    shown = run_portshift(["jobs", "show", job_id, "--state", str(state), "--json"])
    assert shown.returncode == 0, shown.stderr
    problems = {p["recording_id"]: p for p in json.loads(shown.stdout)["problems"]}
    # ... and so is every other listed call that is not exported, with its own reason: pending
    # (not processed yet) or nothing recorded; no listed call is dropped without a word
    others = {
        cid: outcome.partition(":")[2]
        for cid, outcome in t.outcomes(WINDOW.start, WINDOW.end).items()
        if outcome.startswith(("pending:", "skipped:"))
    }
    assert others, "the tenant must hold calls that are not exported"
    assert {k: v["reason"] for k, v in problems.items()} == {c.engagement_id: c.hidden for c in expected if c.hidden} | others
    for k, v in problems.items():
        pending = t.outcomes(WINDOW.start, WINDOW.end)[k].startswith("pending:")
        assert v["status"] in (("pending", "skipped") if pending else ("skipped",)), v

    # no token and no media link anywhere: output, logs, state DB (and its WAL), exported files
    links = list(sim.stats.links)
    assert links
    secrets = [CANARY] + links + [link.split("sig=")[1] for link in links]
    blobs = [r.stdout.encode(), r.stderr.encode(), shown.stdout.encode()]
    blobs += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "job.toml"]
    for blob in blobs:
        for s in secrets:
            assert s.encode() not in blob

    # a second run of the same job file has nothing to do
    again = run_portshift(
        ["run", "--config", str(job), "--state", str(state), "--no-progress"], {"PORTSHIFT_CHORUS_TOKEN": CANARY}
    )
    assert again.returncode == 0 and "already complete" in again.stdout


def test_portshift_run_with_a_wrong_token_stops_at_once(sim: ChorusSimulator, tmp_path: Path) -> None:
    job = write_job(tmp_path, sim, tmp_path / "export")
    r = run_portshift(
        ["run", "--config", str(job), "--state", str(tmp_path / "state.db"), "--no-progress"],
        {"PORTSHIFT_CHORUS_TOKEN": CANARY + "-wrong"},
    )
    assert r.returncode == 5, r.stdout + r.stderr
    assert "the Chorus token was rejected" in r.stdout + r.stderr
    assert CANARY not in r.stdout + r.stderr
    assert sim.stats.total("api") == 1


def test_a_media_that_always_arrives_truncated_is_never_recorded_as_done(sim: ChorusSimulator, tmp_path: Path) -> None:
    from portshift_source_chorus.simulator.tenant import _unit

    sim.configure(faults=Faults(truncate=Fault(ratio=0.25, times=-1, on=("media",))))
    visible = [c for c in sim.tenant.exportable() if not c.hidden]
    seed = sim.tenant.spec.seed
    cut = {c.engagement_id for c in visible if c.media_size > 1 and _unit(seed, "truncate", f"media:{c.engagement_id}") < 0.25}
    assert cut and len(cut) < len(visible)
    out, state = tmp_path / "export", tmp_path / "state.db"
    job = write_job(tmp_path, sim, out)
    job.write_text(job.read_text().replace("retries = 3", "retries = 1").replace("[source]\n", "[source]\nretries = 1\n"))
    r = run_portshift(["run", "--config", str(job), "--state", str(state), "--no-progress"], {"PORTSHIFT_CHORUS_TOKEN": CANARY})
    assert r.returncode == 3, r.stdout + r.stderr  # partial: re-run to retry them
    (root,) = list(out.iterdir())
    assert not (root / "portshift-manifest.txt").exists()  # a partial job writes no manifest
    stored = {p.parent.name for p in root.rglob("media.*")}
    assert stored == {c.engagement_id for c in visible} - cut
    shown = run_portshift(["jobs", "show", root.name, "--state", str(state), "--json"])
    problems = json.loads(shown.stdout)["problems"]
    assert {p["recording_id"] for p in problems if p["status"] == "failed"} == cut
    assert all("broke off" in p["message"] for p in problems if p["status"] == "failed")
    assert not list(root.rglob("*.tmp*")) and not [p for p in root.rglob("*") if p.name.startswith(".")]
