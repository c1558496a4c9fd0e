"""The pipeline end to end, in process: example/test sources into the local sink."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portshift.api import Artifact, Opened, PutResult, Recording, Sink, Source, Window
from portshift.errors import AuthError, ConfigError, ExitCode, LockedError, SkipRecording
from portshift.hashing import HashingStream
from portshift.options import PluginOptions
from portshift.pipeline import RunRequest

from .conftest import StateBackend
from .support import files_under, manifest_paths, plugin, run_job, sha256sum_check


def example_doc(out: Path, count: int = 6, media_size: int = 10_000, **job: object) -> dict:
    return {
        "job": {"transfers": 3, **job},
        "source": {"type": "example", "count": count, "media_size": media_size},
        "sink": {"type": "local", "path": str(out)},
    }


def test_full_run_writes_a_manifest_sha256sum_accepts(tmp_path: Path, state_backend: StateBackend) -> None:
    out = tmp_path / "out"
    result = run_job(example_doc(out), state_backend)
    assert result.status == "complete" and result.exit_code == ExitCode.OK
    root = out / result.export_root
    assert result.files == 12
    check = sha256sum_check(root)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 13  # 12 files + the JSON index
    assert manifest_paths(root) == files_under(root) - {"portshift-manifest.txt"}
    digest = hashlib.sha256((root / "portshift-manifest.txt").read_bytes()).hexdigest()
    assert result.manifest_sha256 == digest
    with state_backend.open() as state:
        job = state.job(result.job_id)
        assert job.manifest_sha256 == digest and job.status == "complete"
        assert job.file_count == 12


def test_rerun_of_a_complete_job_does_nothing_and_since_last_exports_only_new(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    out = tmp_path / "out"
    doc = example_doc(out, count=10)
    doc["source"]["every_minutes"] = 60
    first = run_job(doc, state_backend, RunRequest(until=_dt("2024-01-01T14:30:00")))
    assert first.status == "complete" and first.files == 2 * 6  # 09:00 .. 14:00
    again = run_job(doc, state_backend)
    assert again.status == "up-to-date" and again.job_id == first.job_id
    later = run_job(doc, state_backend, RunRequest(since_last=True))
    assert later.status == "complete" and later.files == 2 * 4  # 15:00 .. 18:00
    assert later.export_root != first.export_root
    for r in (first, later):
        assert sha256sum_check(out / r.export_root).returncode == 0


def _dt(text: str):  # noqa: ANN202
    from portshift.config import parse_when

    return parse_when(text, "test")


class FlakySource(Source):
    """Recordings r0..r9; some artifacts fail a configurable number of times."""

    class Options(PluginOptions):
        section = "source"
        count: int = 10

    #: set by each test (not options: changing options would make it a different job)
    fail: dict[str, int] = {}
    truncate: list[str] = []
    wrong_hash: list[str] = []
    skip: dict[str, str] = {}
    auth_fail: list[str] = []
    attempts: dict[str, int] = {}
    opened: list[str] = []

    def location(self) -> str:
        return "flaky:"

    def recordings(self, window: Window) -> Iterator[Recording]:
        for i in range(self.options.count):
            yield Recording(id=f"r{i}", started_at=_dt("2024-03-01T10:00:00"))

    def artifacts(self, rec: Recording) -> Iterator[Artifact]:
        if rec.id in self.skip:
            raise SkipRecording(self.skip[rec.id], f"{rec.id} is private")
        if rec.id in self.auth_fail:
            raise AuthError("the token was rejected", operation="get conversation", status=401)
        data = hashlib.sha256(rec.id.encode()).digest() * 1000

        def open_() -> Opened:
            FlakySource.opened.append(rec.id)
            n = FlakySource.attempts.get(rec.id, 0)
            FlakySource.attempts[rec.id] = n + 1
            if n < self.fail.get(rec.id, 0):

                def broken() -> Iterator[bytes]:
                    yield data[:1000]
                    raise ConnectionResetError("connection reset by peer")

                return Opened(chunks=broken(), size=len(data))
            if rec.id in self.truncate:
                return Opened(chunks=iter([data[:-5]]), size=len(data))
            return Opened(chunks=iter([data[:7], data[7:]]), size=len(data))

        yield Artifact(name="media", open=open_, extension="bin", sha256=("0" * 64) if rec.id in self.wrong_hash else None)


@pytest.fixture
def flaky():
    FlakySource.attempts, FlakySource.opened = {}, []
    FlakySource.fail, FlakySource.truncate, FlakySource.wrong_hash, FlakySource.skip, FlakySource.auth_fail = {}, [], [], {}, []
    with plugin("test-flaky", sources={"flaky": FlakySource}):
        yield FlakySource


def flaky_doc(out: Path, count: int = 10, **behaviour: object) -> dict:
    for name, value in behaviour.items():
        setattr(FlakySource, name, value)
    return {
        "job": {"transfers": 2, "retries": 2},
        "source": {"type": "flaky", "count": count},
        "sink": {"type": "local", "path": str(out)},
    }


def test_transient_failures_are_retried_and_the_job_completes(tmp_path: Path, state_backend: StateBackend, flaky) -> None:  # noqa: ANN001
    result = run_job(flaky_doc(tmp_path / "out", fail={"r1": 2, "r4": 1}), state_backend)
    assert result.status == "complete", result.failed
    assert flaky.attempts["r1"] == 3 and flaky.attempts["r4"] == 2
    assert sha256sum_check(tmp_path / "out" / result.export_root).returncode == 0


def test_truncated_or_corrupt_files_are_never_done_and_a_rerun_finishes_only_them(
    tmp_path: Path, state_backend: StateBackend, flaky
) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    doc = flaky_doc(out, truncate=["r2"], wrong_hash=["r3"], fail={"r5": 99})
    first = run_job(doc, state_backend)
    assert first.status == "partial" and first.exit_code == ExitCode.PARTIAL
    assert {p["recording_id"] for p in first.failed} == {"r2", "r3", "r5"}
    assert not (out / first.export_root / "portshift-manifest.txt").exists(), "no manifest for an unfinished job"
    with state_backend.open() as state:
        keys = {f["key"] for f in state.files(first.job_id)}
    assert not any(f"/{r}/" in k for k in keys for r in ("r2", "r3", "r5"))
    assert len(keys) == 7
    assert files_under(out / first.export_root) == set(keys), "a truncated or corrupt file reached the destination"
    # the problem goes away: a re-run resumes the same job and fetches only what is missing
    flaky.truncate, flaky.wrong_hash, flaky.fail = [], [], {}
    flaky.opened.clear()
    second = run_job(doc, state_backend)
    assert second.resumed and second.job_id == first.job_id and second.already_done == 7
    assert sorted(flaky.opened) == ["r2", "r3", "r5"]
    assert second.status == "complete" and second.files == 10


def test_skipped_recordings_are_listed_with_their_reason_and_do_not_block(
    tmp_path: Path, state_backend: StateBackend, flaky
) -> None:  # noqa: ANN001
    result = run_job(flaky_doc(tmp_path / "out", skip={"r7": "not_found"}), state_backend)
    assert result.status == "complete"
    assert [(p["recording_id"], p["reason"]) for p in result.skipped] == [("r7", "not_found")]
    assert result.files == 9


def test_rejected_credentials_stop_the_job_at_once(tmp_path: Path, state_backend: StateBackend, flaky) -> None:  # noqa: ANN001
    result = run_job(flaky_doc(tmp_path / "out", auth_fail=[f"r{i}" for i in range(10)], count=10), state_backend)
    assert result.status == "failed" and result.exit_code == ExitCode.FATAL
    assert "rejected" in result.message
    assert sum(flaky.attempts.values()) == 0


class LazySink(Sink):
    """A broken sink: stores only the first 10 bytes and says it stored them."""

    class Options(PluginOptions):
        section = "sink"

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        data = stream.read(10)
        return PutResult(key=key, size=len(data))


def test_a_sink_that_does_not_read_everything_never_produces_a_done_file(
    tmp_path: Path, state_backend: StateBackend, flaky
) -> None:  # noqa: ANN001
    with plugin("test-lazy", sinks={"lazy": LazySink}):
        doc = flaky_doc(tmp_path / "out", count=2)
        doc["sink"] = {"type": "lazy"}
        result = run_job(doc, state_backend)
    assert result.status == "partial" and result.files == 0
    assert all("stopped reading" in p["message"] for p in result.failed)


def test_an_unfinished_job_refuses_a_different_window_and_new_starts_over(
    tmp_path: Path, state_backend: StateBackend, flaky
) -> None:  # noqa: ANN001
    doc = flaky_doc(tmp_path / "out", fail={"r0": 99})
    first = run_job(doc, state_backend)
    assert first.status == "partial"
    with pytest.raises(ConfigError, match="unfinished"):
        run_job(doc, state_backend, RunRequest(since=_dt("2020-01-01")))
    flaky.fail = {}
    fresh = run_job(doc, state_backend, RunRequest(new=True))
    assert fresh.job_id != first.job_id and not fresh.resumed and fresh.files == 10
    with state_backend.open() as state:
        assert state.job(first.job_id).status == "abandoned"


def test_two_runs_of_the_same_job_cannot_overlap(tmp_path: Path, state_backend: StateBackend) -> None:
    doc = example_doc(tmp_path / "out")
    with state_backend.open() as holder:
        from portshift.config import load_job
        from portshift.pipeline import job_key

        cfg = load_job(None, doc=doc)
        holder.lock(job_key(cfg, cfg.source_cls(cfg.source_options), cfg.sink_cls(cfg.sink_options)))
        with pytest.raises(LockedError, match="in progress"):
            run_job(doc, state_backend)
    assert run_job(doc, state_backend).status == "complete"


def test_dry_run_transfers_and_records_nothing(tmp_path: Path, state_backend: StateBackend) -> None:
    out = tmp_path / "out"
    result = run_job(example_doc(out), state_backend, RunRequest(dry_run=True))
    assert result.status == "dry-run" and "6 to export" in result.message
    assert not out.exists() or not any(out.iterdir())
    with state_backend.open() as state:
        assert state.jobs() == []


def test_lifecycle_hooks_carry_no_content(tmp_path: Path, state_backend: StateBackend) -> None:
    events: list[tuple[str, object]] = []
    with plugin(
        "test-events",
        job_started=lambda job, resumed: events.append(("started", job.id)),
        file_exported=lambda job, file: events.append(("file", file)),
        job_finished=lambda job, manifest_sha256: events.append(("finished", (job.status, manifest_sha256))),
    ):
        result = run_job(example_doc(tmp_path / "out", count=2), state_backend)
    kinds = [e[0] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("file") == 4
    assert events[-1][1] == ("complete", result.manifest_sha256)
    for kind, value in events:
        if kind == "file":
            assert set(vars(value)) == {"key", "size", "sha256", "recording_id", "artifact"}


def test_cancel_stops_cleanly_and_a_rerun_resumes(tmp_path: Path, state_backend: StateBackend) -> None:
    out = tmp_path / "out"
    doc = example_doc(out, count=40, media_size=2_000_000)
    doc["source"]["chunk_size"] = 4096
    cancel = threading.Event()
    seen = []

    def on_file(job, file) -> None:  # noqa: ANN001
        seen.append(file.key)
        if len(seen) == 5:
            cancel.set()

    with plugin("test-cancel", file_exported=on_file):
        first = run_job(doc, state_backend, cancel=cancel)
    assert first.status == "interrupted" and first.exit_code == ExitCode.INTERRUPTED
    root = out / first.export_root
    assert not (root / "portshift-manifest.txt").exists()
    assert not [p for p in files_under(root) if p.endswith(".part")], "a temporary file was left behind"
    with plugin("test-cancel-2", file_exported=lambda job, file: seen.append(file.key)):
        second = run_job(doc, state_backend)
    assert second.resumed and second.status == "complete" and second.files == 80
    assert len(seen) == 80 and len(set(seen)) == 80, "a file done before the stop was transferred again"
    assert sha256sum_check(root).returncode == 0


def test_manifest_json_index_lists_every_file_with_its_recording(tmp_path: Path, state_backend: StateBackend) -> None:
    out = tmp_path / "out"
    result = run_job(example_doc(out, count=3), state_backend)
    index = json.loads((out / result.export_root / "portshift-manifest.json").read_text())
    assert index["format"] == 2 and index["job"]["id"] == result.job_id
    assert len(index["files"]) == 6
    assert {f["artifact"] for f in index["files"]} == {"media", "metadata"}
    for f in index["files"]:
        data = (out / result.export_root / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]


def test_a_failing_lifecycle_hook_never_changes_the_outcome(
    tmp_path: Path, state_backend: StateBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(**kwargs: object) -> None:
        raise RuntimeError("observer bug")

    with plugin(
        "test-broken-observer",
        job_started=lambda job, resumed: boom(),
        file_exported=lambda job, file: boom(),
        job_finished=lambda job, manifest_sha256: boom(),
    ):
        result = run_job(example_doc(tmp_path / "out", count=2), state_backend)
    assert result.status == "complete" and result.files == 4
    assert "file_exported hook failed (RuntimeError); ignored" in caplog.text


class JournalingSink(Sink):
    """Journals every put; 'crashes' (a BaseException, like SIGKILL it skips cleanup) on r3."""

    class Options(PluginOptions):
        section = "sink"
        path: str

    recovered: list[tuple[str, dict[str, str]]] = []

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        assert self.journal is not None
        self.journal.begin(key, {"upload_id": f"u-{key}"})
        data = stream.read()
        if "/r3/" in key and not JournalingSink.recovered:
            raise SystemExit("simulated crash: the journal entry stays")
        self.journal.end(key)
        return PutResult(key=key, size=len(data))

    def recover(self, pending: list[tuple[str, dict[str, str]]]) -> None:
        JournalingSink.recovered.extend(pending)


@contextlib.contextmanager
def crashed_journaling_job(tmp_path: Path, state_backend: StateBackend, name: str) -> Iterator[dict[str, Any]]:
    """A job of 5 recordings, one at a time, into :class:`JournalingSink`, run once until the flaky
    source ends the process with a put in flight; yields the job document, the sink still registered."""
    JournalingSink.recovered = []
    with plugin(name, sinks={"journaling": JournalingSink}):
        doc = flaky_doc(tmp_path / "out", count=5)
        doc["job"]["transfers"] = 1
        doc["sink"] = {"type": "journaling", "path": "x"}
        with pytest.raises(SystemExit):
            run_job(doc, state_backend)
        yield doc


def test_a_sink_journal_survives_a_crash_and_is_recovered_on_resume(tmp_path: Path, state_backend: StateBackend, flaky) -> None:  # noqa: ANN001
    with crashed_journaling_job(tmp_path, state_backend, "test-journal") as doc:
        result = run_job(doc, state_backend)
    assert result.resumed and result.status == "complete"
    assert [k for k, _ in JournalingSink.recovered] == [f"{result.export_root}/2024/03/01/r3/media.bin"]
    assert JournalingSink.recovered[0][1] == {"upload_id": f"u-{JournalingSink.recovered[0][0]}"}
    with state_backend.open() as state:
        assert state.journal(result.job_id).pending() == []


def test_new_cleans_up_what_the_abandoned_job_left_in_flight(tmp_path: Path, state_backend: StateBackend, flaky) -> None:  # noqa: ANN001
    with crashed_journaling_job(tmp_path, state_backend, "test-journal-new") as doc:
        fresh = run_job(doc, state_backend, RunRequest(new=True))
    assert not fresh.resumed and fresh.status == "complete"
    assert len(JournalingSink.recovered) == 1 and "/r3/" in JournalingSink.recovered[0][0]


class StoreThenFailManifestSink(Sink):
    """Stores everything; the first time it stores the manifest it then fails (the answer is lost)."""

    class Options(PluginOptions):
        section = "sink"
        path: str

    manifests: list[bytes] = []

    def __init__(self, options: Options) -> None:
        self.root = Path(options.path)

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        data = b"".join(stream.chunks(65536))
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if key.endswith("/portshift-manifest.txt"):
            type(self).manifests.append(data)
            if len(type(self).manifests) == 1:
                raise OSError("the connection dropped after the store had the manifest")
        return PutResult(key=key, size=len(data))


def test_a_manifest_rewritten_after_a_failed_attempt_is_byte_for_byte_the_same(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    # A store that never replaces an object (GCS with ifGenerationMatch=0) accepts the rewrite only
    # if it is identical: so the manifest must not carry the time of the attempt.
    StoreThenFailManifestSink.manifests = []
    with plugin("test-store-then-fail", sinks={"store-then-fail": StoreThenFailManifestSink}):
        doc = example_doc(tmp_path / "out", count=3)
        doc["sink"] = {"type": "store-then-fail", "path": str(tmp_path / "out")}
        first = run_job(doc, state_backend)
        assert first.status == "failed" and "writing the manifest" in first.message
        import time

        time.sleep(1.1)  # a timestamp of the attempt would now differ
        second = run_job(doc, state_backend)
    assert second.status == "complete", second.message
    first_bytes, second_bytes = StoreThenFailManifestSink.manifests
    assert first_bytes == second_bytes
    assert sha256sum_check(tmp_path / "out" / second.export_root).returncode == 0
