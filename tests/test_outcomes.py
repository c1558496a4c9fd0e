"""Every listed recording ends in exactly one outcome (exported, already exported, skipped with a
reason, pending, failed), files missing at the source are recorded, and ``--since last`` picks up
what was pending; a window with nothing new writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from portshift import ArtifactMissing, RecordingPending, SkipRecording
from portshift.api import Artifact, Recording, Source, Window
from portshift.options import PluginOptions
from portshift.pipeline import RunRequest
from portshift.state import State

from .support import files_under, plugin, run_job, sha256sum_check

NOW = datetime.now(timezone.utc).replace(microsecond=0)


class TenantOptions(PluginOptions):
    section = "source"
    count: int = 6


class Tenant(Source):
    """Calls one day apart ending yesterday; ``processing`` ones are pending, ``private`` ones are
    skipped from the listing, ``no_media`` ones have no recording (their metadata is exported)."""

    Options = TenantOptions
    processing: set[str] = set()
    private: set[str] = set()
    no_media: set[str] = set()

    def location(self) -> str:
        return "tenant:test"

    def recordings(self, window: Window) -> Iterator[Recording]:
        for i in range(self.options.count):  # type: ignore[attr-defined]
            started = NOW - timedelta(days=self.options.count - i)  # type: ignore[attr-defined]
            if not window.start <= started < window.end:
                continue
            rec = Recording(id=f"c{i}", started_at=started, size=10)
            if rec.id in self.private:
                rec.skipped = SkipRecording("private", "the call is private")
            yield rec

    def artifacts(self, rec: Recording) -> Iterator[Artifact]:
        if rec.id in self.processing:
            raise RecordingPending("processing", "the call is still being processed")

        def media() -> object:
            raise ArtifactMissing("media_not_found", "the call has no recording (HTTP 404)")

        if rec.id in self.no_media:
            yield Artifact(name="media", open=media, extension="mp3")  # type: ignore[arg-type]
        else:
            yield Artifact.from_bytes("media", b"0123456789", "mp3", "audio/mpeg")
        yield Artifact.from_bytes("metadata", json.dumps({"id": rec.id}).encode(), "json", "application/json")


def doc(out: Path, **source: object) -> dict:
    return {"job": {"transfers": 2}, "source": {"type": "tenant", **source}, "sink": {"type": "local", "path": str(out)}}


def _fresh() -> None:
    Tenant.processing, Tenant.private, Tenant.no_media = set(), set(), set()


def test_a_call_processing_at_one_run_is_exported_by_the_next_since_last_run(tmp_path: Path) -> None:
    _fresh()
    out, db = tmp_path / "out", tmp_path / "s.db"
    Tenant.processing = {"c1"}
    with plugin("tenant", sources={"tenant": Tenant}):
        first = run_job(doc(out), db, RunRequest(since=NOW - timedelta(days=30)))
        assert first.status == "complete" and first.counts == {"done": 5, "pending": 1}
        assert [p["recording_id"] for p in first.pending] == ["c1"] and first.pending[0]["reason"] == "processing"
        index = json.loads((out / first.export_root / "portshift-manifest.json").read_text())
        assert [(p["recording_id"], p["status"]) for p in index["not_exported"]] == [("c1", "pending")]
        assert "c1" not in {f["recording_id"] for f in index["files"]}

        Tenant.processing = set()  # processed since
        second = run_job(doc(out), db, RunRequest(since_last=True))
    # c1 started 5 days ago, before the 3-day margin: the window reaches back to it
    assert second.status == "complete" and second.counts == {"done": 1, "exported_earlier": 4}, second.report()
    assert second.already_done == 4  # c2..c5, exported by the first job, are not exported again
    assert files_under(out / second.export_root) == {
        f"{(NOW - timedelta(days=5)):%Y/%m/%d}/c1/media.mp3",
        f"{(NOW - timedelta(days=5)):%Y/%m/%d}/c1/metadata.json",
        "portshift-manifest.json",
        "portshift-manifest.txt",
    }
    assert sha256sum_check(out / second.export_root).returncode == 0
    with State.open(db) as state:
        assert state.oldest_pending(state.job(second.job_id).job_key) is None  # type: ignore[union-attr]


def test_a_missing_media_file_keeps_the_rest_of_the_call_and_is_listed(tmp_path: Path) -> None:
    _fresh()
    out = tmp_path / "out"
    Tenant.no_media, Tenant.private = {"c2"}, {"c4"}
    with plugin("tenant", sources={"tenant": Tenant}):
        result = run_job(doc(out), tmp_path / "s.db", RunRequest(since=NOW - timedelta(days=30)))
    assert result.status == "complete" and result.exit_code == 0
    assert result.counts == {"done": 5, "skipped": 1}
    assert [(p["recording_id"], p["artifact"], p["reason"]) for p in result.missing] == [("c2", "media", "media_not_found")]
    assert [(p["recording_id"], p["reason"]) for p in result.skipped] == [("c4", "private")]
    root = out / result.export_root
    index = json.loads((root / "portshift-manifest.json").read_text())
    assert {(p["recording_id"], p["status"]) for p in index["not_exported"]} == {("c2", "missing"), ("c4", "skipped")}
    exported = {(f["recording_id"], f["artifact"]) for f in index["files"]}
    assert ("c2", "metadata") in exported and ("c2", "media") not in exported
    assert sha256sum_check(root).returncode == 0
    report = result.report()
    assert report["recordings"] == {"exported": 5, "already_exported": 0, "skipped": 1, "pending": 0, "failed": 0}
    assert report["missing_artifacts"][0]["artifact"] == "media"


def test_a_window_with_nothing_new_writes_no_export_root_unless_asked(tmp_path: Path) -> None:
    _fresh()
    out = tmp_path / "out"
    out.mkdir()
    window = RunRequest(since=NOW - timedelta(days=400), until=NOW - timedelta(days=300))
    with plugin("tenant", sources={"tenant": Tenant}):
        empty = run_job(doc(out), tmp_path / "s.db", window)
        assert empty.status == "nothing-new" and empty.exit_code == 0 and "nothing new" in empty.message
        assert list(out.iterdir()) == []
        asked = run_job(doc(out), tmp_path / "s2.db", RunRequest(since=window.since, until=window.until, allow_empty=True))
    assert asked.status == "complete" and asked.manifest_sha256
    assert sha256sum_check(out / asked.export_root).returncode == 0


def test_the_manifest_finish_time_is_when_the_last_file_was_stored(tmp_path: Path) -> None:
    _fresh()
    out = tmp_path / "out"
    with plugin("tenant", sources={"tenant": Tenant}):
        result = run_job(doc(out), tmp_path / "s.db", RunRequest(since=NOW - timedelta(days=30)))
    head = dict(
        line[2:].split(": ", 1)
        for line in (out / result.export_root / "portshift-manifest.txt").read_text().splitlines()
        if line.startswith("# ") and ": " in line
    )
    started, finished = datetime.fromisoformat(head["started"]), datetime.fromisoformat(head["finished"])
    assert started <= finished <= datetime.now(timezone.utc)
    assert finished > NOW - timedelta(minutes=5), "finished must be the export's time, not a recording's date"


# --- the inventory in the manifest, and verify --against-source ----------------------------------
def _example_job(tmp_path: Path, count: int) -> Path:
    job = tmp_path / f"job{count}.toml"
    job.write_text(
        f'[job]\nuntil = 2024-01-10\n\n[source]\ntype = "example"\ncount = {count}\nmedia_size = 100\n\n'
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    return job


def test_the_manifest_carries_the_sources_inventory_and_verify_compares_it_with_a_new_listing(tmp_path: Path) -> None:
    import subprocess

    from .test_cli import portshift

    r = portshift("run", "--config", str(_example_job(tmp_path, 4)), "--state", str(tmp_path / "s.db"), "--report", "json")
    assert r.returncode == 0, r.stderr
    root = tmp_path / "out" / json.loads(r.stdout)["export_root"]
    text = (root / "portshift-manifest.txt").read_text()
    ids = [f"ex0000{n:06d}" for n in range(4)]
    # the digest a user can recompute from any later listing, without portshift
    shell = subprocess.run(
        "printf '%s\\n' " + " ".join(reversed(ids)) + " | LC_ALL=C sort | sha256sum",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    )
    digest = shell.stdout.split()[0]
    for line in ("# listed: 4", "# exported: 4", "# skipped: 0", "# pending: 0", f"# listed ids sha256: {digest}"):
        assert line in text.splitlines(), (line, text)
    index = json.loads((root / "portshift-manifest.json").read_text())
    assert index["inventory"]["listed"] == 4 and index["inventory"]["listed_ids_sha256"] == digest
    assert subprocess.run(["sha256sum", "-c", "--quiet", "portshift-manifest.txt"], cwd=root).returncode == 0

    same = portshift("verify", str(root), "--against-source", "--config", str(_example_job(tmp_path, 4)))
    assert same.returncode == 0 and "source OK: 4 listed now, 0 new, 0 gone, 0 vanished" in same.stdout, same
    assert "the same listing as at export time" in same.stdout
    grown = portshift("verify", str(root), "--against-source", "--config", str(_example_job(tmp_path, 5)), "--json")
    assert grown.returncode == 4
    assert json.loads(grown.stdout)["source"]["new"] == ["ex0000000004"]
    shrunk = portshift("verify", str(root), "--against-source", "--config", str(_example_job(tmp_path, 3)))
    assert shrunk.returncode == 4 and "- gone     ex0000000003" in shrunk.stdout
    alone = portshift("verify", str(root), "--against-source")
    assert alone.returncode == 2 and "needs --config" in alone.stderr
