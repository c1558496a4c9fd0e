"""Bring your own key (docs/byok.md): a full export with the job metadata sealed, on both state
backends; then the database's bytes (SQLite file, WAL and all; a pg_dump) hold none of the
recording ids, the sink's folder names, the file digests or the error texts, searched as bytes,
hex and base64. The job's clear fields stay readable; a tampered row is one clear error."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from portshift.api import Artifact, Recording
from portshift.config import load_job
from portshift.default_plugins.example_source import ExampleSource
from portshift.errors import ArtifactMissing, RecordingPending, SkipRecording, SourceError
from portshift.key_providers import LocalKeyFile, key_provider
from portshift.pipeline import Runner, RunRequest
from portshift.sealing import KeyUnavailableError, SealedValueError
from portshift.state import State

from .conftest import StateBackend
from .pg_server import pg_bin
from .support import plugin, sha256sum_check

MARK = "ZQXACMECORPORATION"  #: in every recording id, folder name and error text: greppable, never a word


class AcmeSource(ExampleSource):
    """The example tenant with customer-looking ids; one recording private, one missing its media."""

    def recordings(self, window: Any) -> Iterator[Recording]:
        for rec in super().recordings(window):
            rec.id = f"{MARK}-rec-{rec.id[-4:]}-{hashlib.sha256(rec.id.encode()).hexdigest()[:6]}"
            yield rec

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        n = int(recording.id.split("-")[2])
        if n == 3:
            raise SkipRecording("private", f"{MARK} call {recording.id} is private to its owner")
        for artifact in super().artifacts(recording):
            if n == 5 and artifact.name == "media":
                yield dataclasses.replace(artifact, open=lambda rid=recording.id: _expired(rid))
            else:
                yield artifact


def _expired(recording_id: str) -> Any:
    raise ArtifactMissing("media_not_found", f"{MARK} media of {recording_id} expired")


def key_file(folder: Path, name: str = "state.key") -> Path:
    path = folder / name
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def job_doc(out: Path, count: int = 8) -> dict[str, Any]:
    return {
        "job": {"transfers": 2},
        "source": {"type": "acme", "count": count, "media_size": 1000},
        "sink": {"type": "local", "path": str(out), "fsync": False},
    }


def run_sealed(backend: StateBackend, doc: dict[str, Any], key: str, req: RunRequest | None = None) -> Any:
    with plugin("acme-source", sources={"acme": AcmeSource}), backend.open() as state:
        cfg = load_job(None, doc=doc)
        state.seals.use(key_provider(key))
        return Runner(cfg, state, retry_base=0.0).run(req or RunRequest())


def needles_of(root: Path, state: State, job_id: str) -> list[str]:
    """What names the customer's data: ids, folder names, digests, error texts."""
    manifest = (root / "portshift-manifest.txt").read_text().splitlines()
    digests = [line.split("  ", 1)[0] for line in manifest if line and not line.startswith("#")]
    ids = sorted(state.listed_ids(job_id))
    problems = [p.message for p in state.problems(job_id)]
    assert len(ids) == 8 and len(digests) >= 10 and len(problems) == 2
    return [*ids, *digests, *problems, root.parent.name, root.parent.parent.name, MARK]


def encodings(needle: str) -> Iterator[bytes]:
    raw = needle.encode()
    yield raw
    yield raw.hex().encode()
    yield raw.hex().upper().encode()
    for shift in range(3):  # base64 of the value at each alignment, without the edge characters
        text = base64.b64encode(b"\0" * shift + raw)
        yield text[4 : len(text) - 4]
        text = base64.urlsafe_b64encode(b"\0" * shift + raw)
        yield text[4 : len(text) - 4]


def assert_absent(dump: bytes, needles: list[str]) -> None:
    for needle in needles:
        for form in encodings(needle):
            assert len(form) >= 8 and form not in dump, f"{needle!r} is in the state dump as {form[:40]!r}"


def dump_of(backend: StateBackend) -> bytes:
    if backend.kind == "sqlite":
        return b"".join(Path(backend.target + s).read_bytes() for s in ("", "-wal", "-shm") if Path(backend.target + s).exists())
    server = backend.server
    assert server is not None
    r = subprocess.run(
        [pg_bin("pg_dump"), "--data-only", "--inserts",
         f"host=127.0.0.1 port={server.port} dbname={backend.dbname} user=postgres sslmode=verify-full "
         f"sslrootcert={server.ca_pem}"],
        env={**os.environ, "PGPASSWORD": server.admin_password}, capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert b"INSERT INTO" in r.stdout and b"job_keys" in r.stdout
    return r.stdout


def test_a_full_sealed_export_leaves_no_customer_name_in_the_database(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / f"{MARK}-bucket" / f"{MARK}-prefix"
    out.mkdir(parents=True)
    key = f"file:{key_file(tmp_path)}"
    result = run_sealed(state_backend, job_doc(out), key)
    assert result.status == "complete", result.message
    root = out / result.job_id
    assert sha256sum_check(root).returncode == 0
    with state_backend.open() as state:
        job = state.job(result.job_id)
        assert job is not None and job.sealed is None  # no key configured: the stored key name unwraps
        assert job.sink_location == str(out) and job.export_root == result.job_id and job.manifest_sha256
        assert state.recording_counts(result.job_id) == {"done": 7, "skipped": 1}
        assert {p.status for p in state.problems(result.job_id)} == {"skipped", "missing"}
        needles = needles_of(root, state, result.job_id)
        assert [f["key"] for f in state.files(result.job_id)] == sorted(f["key"] for f in state.files(result.job_id))
    assert_absent(dump_of(state_backend), needles)


def test_without_a_key_the_same_export_is_in_clear(state_backend: StateBackend, tmp_path: Path) -> None:
    """The control: the search above finds what a clear state holds."""
    out = tmp_path / f"{MARK}-bucket" / f"{MARK}-prefix"
    out.mkdir(parents=True)
    with plugin("acme-source", sources={"acme": AcmeSource}), state_backend.open() as state:
        cfg = load_job(None, doc=job_doc(out))
        result = Runner(cfg, state, retry_base=0.0).run(RunRequest())
        needles = needles_of(out / result.job_id, state, result.job_id)
    with pytest.raises(AssertionError, match="is in the state dump"):
        assert_absent(dump_of(state_backend), needles)


class FlakySource(AcmeSource):
    """Recording 2 fails while ``failing`` is set (the first run), then works (the resume)."""

    failing = True

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        if FlakySource.failing and recording.id.split("-")[2] == "0002":
            raise SourceError(f"{MARK} the source failed on {recording.id}", operation="get media")
        yield from super().artifacts(recording)


def test_resume_of_a_sealed_job_goes_through_the_keyed_hashes(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    key = f"file:{key_file(tmp_path)}"
    doc = {**job_doc(out, count=6), "source": {"type": "flaky", "count": 6, "media_size": 1000}, "job": {"retries": 0}}
    cfg_plugin = plugin("flaky-source", sources={"flaky": FlakySource})
    with cfg_plugin, state_backend.open() as state:
        state.seals.use(key_provider(key))
        FlakySource.failing = True
        first = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
        assert first.status == "partial" and state.recording_counts(first.job_id)["failed"] == 1
        assert [p.message for p in state.problems(first.job_id) if p.status == "failed"] == [
            f"get media: {MARK} the source failed on {MARK}-rec-0002-e440e2"
        ]
        done = state.done_recordings(first.job_id)
        assert len(done) == 4 and type(done).__name__ == "KeyedIds"
        assert f"{MARK}-rec-0000-{hashlib.sha256(b'ex0000000000').hexdigest()[:6]}" in done
        FlakySource.failing = False
        again = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
    assert again.job_id == first.job_id and again.resumed and again.status == "complete"
    assert (again.already_done, again.exported_now) == (4, 1)
    assert sha256sum_check(out / again.job_id).returncode == 0


def test_a_value_moved_to_another_row_column_or_job_fails_authentication(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    key = f"file:{key_file(tmp_path)}"
    a = run_sealed(state_backend, job_doc(out, count=4), key).job_id
    b = run_sealed(state_backend, job_doc(out, count=4), key, RunRequest(new=True)).job_id
    with state_backend.open() as state:
        content = "from files where job_id = ? and kind = 'content'"
        rows = state._rows("read", f"select key, sha256, sealed_key {content} order by key", [a])
        other = state._rows("read", f"select sha256 {content} limit 1", [b])[0][0]
        state._write("tamper", "update files set sha256 = ? where job_id = ? and key = ?", [rows[1][1], a, rows[0][0]])
        with pytest.raises(SealedValueError, match=f"files.sha256 of job {a} fails authentication"):
            list(state.files(a))
        state._write("tamper", "update files set sha256 = ? where job_id = ? and key = ?", [rows[0][2], a, rows[0][0]])
        with pytest.raises(SealedValueError, match=f"files.sha256 of job {a}"):
            list(state.files(a))
        state._write("tamper", "update files set sha256 = ? where job_id = ? and key = ?", [other, a, rows[0][0]])
        with pytest.raises(SealedValueError, match=f"files.sha256 of job {a}") as e:
            list(state.files(a))
        assert "\n" not in str(e.value)
        sink_b = state._rows("read", "select sink_location from jobs where id = ?", [b])[0][0]
        state._write("tamper", "update jobs set sink_location = ? where id = ?", [sink_b, a])
        with pytest.raises(SealedValueError, match=f"jobs.sink_location of job {a}"):
            state.job(a)


def test_a_lost_key_file_leaves_the_clear_fields_and_says_sealed(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = key_file(tmp_path)
    job_id = run_sealed(state_backend, job_doc(out, count=3), f"file:{path}").job_id
    kept = path.read_bytes()
    path.unlink()
    with state_backend.open() as state:
        job = state.job(job_id)
        assert job is not None and job.status.value == "complete" and job.file_count == 6 and job.byte_count > 0
        assert job.sink_location == "" and job.manifest_sha256 is None
        assert job.sealed and job.sealed.startswith("sealed: the customer's key is not available")
        assert str(path) in job.sealed
        with pytest.raises(KeyUnavailableError, match=f"the key file {path} does not exist"):
            state.problems(job_id)
    path.write_bytes(kept)
    path.chmod(0o600)
    with state_backend.open() as state:
        job = state.job(job_id)
        assert job is not None and job.sealed is None and job.sink_location == str(out)


def test_rewrap_changes_only_the_wrapped_keys(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old, new = key_file(tmp_path, "old.key"), key_file(tmp_path, "new.key")
    job_id = run_sealed(state_backend, job_doc(out, count=3), f"file:{old}").job_id
    tables = ("jobs", "recordings", "files", "missing_artifacts")
    with state_backend.open() as state:
        before = {t: sorted(map(repr, state._rows("read", f"select * from {t}", []))) for t in tables}  # noqa: S608
        assert state.seals.rewrap(LocalKeyFile(str(new))) == 1
        after = {t: sorted(map(repr, state._rows("read", f"select * from {t}", []))) for t in tables}  # noqa: S608
        assert before == after
        assert state._rows("read", "select key_label from job_keys", []) == [(f"file:{new}",)]
    old.unlink()
    with state_backend.open() as state:
        job = state.job(job_id)
        assert job is not None and job.sealed is None and job.sink_location == str(out)


def test_claims_of_a_sealed_job_store_hashes_and_give_back_the_ids(state_backend: StateBackend, tmp_path: Path) -> None:
    """Many workers on a sealed job: the listing's ids and refs are sealed, a claim opens them."""
    from portshift.records import RecordingStatus
    from portshift.state.claims import Claimed

    with state_backend.open() as state:
        state.seals.use(key_provider(f"file:{key_file(tmp_path)}"))
        job_id = state.create_job(job_key="k", window_start="a", window_end="b", sink_location=f"{MARK}-bucket")
        refs = [(f"{MARK}-r{i}", f"2024-01-0{i + 1}", Claimed.ref({"owner": f"{MARK}-owner"}, 10 * i)) for i in range(3)]
        state.add_todo(job_id, refs)
        state.journal(job_id, "w1").begin(f"{MARK}-key", {"upload_id": f"{MARK}-upload"})
        claimed = state.claim(job_id, "w1", 2)
        assert [c.id for c in claimed] == [f"{MARK}-r0", f"{MARK}-r1"]
        assert claimed[1].fields == {"owner": f"{MARK}-owner"} and claimed[1].size == 10
        assert state.finish_claim(job_id, f"{MARK}-r0", "w1", RecordingStatus.FAILED, "x", f"{MARK} failed")
        assert not state.finish_claim(job_id, f"{MARK}-r2", "w1", RecordingStatus.DONE)  # not claimed by w1
        assert [p.message for p in state.problems(job_id)] == [f"{MARK} failed"]
        state.register_worker(job_id, "w1", "one", 1, 60)
        state.end_worker(job_id, "w1")
        assert state.journal_orphans(job_id) == [(f"{MARK}-key", {"upload_id": f"{MARK}-upload"})]
        stored = state._rows("read", "select recording_id, ref, sealed_id from recordings where job_id = ?", [job_id])
        assert all(rid.startswith("h1:") and ref.startswith("s1:") and sid.startswith("s1:") for rid, ref, sid in stored)
    assert_absent(dump_of(state_backend), [MARK])


class LateSource(AcmeSource):
    """Recording 1 is still processing while ``processing`` is set."""

    processing = True

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        if LateSource.processing and recording.id.split("-")[2] == "0001":
            raise RecordingPending("processing", f"{MARK} {recording.id} is still processing")
        yield from super().artifacts(recording)


def test_since_last_across_sealed_jobs_finds_pending_and_earlier_exports(state_backend: StateBackend, tmp_path: Path) -> None:
    """Each sealed job has its own keys, so their keyed hashes differ: the ids are compared opened."""
    out = tmp_path / "out"
    out.mkdir()
    doc = {**job_doc(out, count=8), "source": {"type": "late", "count": 8, "media_size": 1000}}
    with plugin("late-source", sources={"late": LateSource}), state_backend.open() as state:
        state.seals.use(key_provider(f"file:{key_file(tmp_path)}"))
        LateSource.processing = True
        first = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(
            RunRequest(since_last=True, until=datetime(2024, 1, 7, tzinfo=timezone.utc))
        )
        assert state.recording_counts(first.job_id).get("pending") == 1, first.message
        job = state.job(first.job_id)
        assert job is not None
        assert state.oldest_pending(job.job_key) == "2024-01-02T09:00:00Z"
        LateSource.processing = False
        second = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(
            RunRequest(since_last=True, until=datetime(2024, 1, 9, tzinfo=timezone.utc))
        )
        assert second.job_id != first.job_id
        earlier = state.exported_earlier(second.job_id)
        assert state.oldest_pending(job.job_key) is None
    # recordings 2, 4, 5 were exported by the first job; 1 (was pending), 6 and 7 by the second
    assert [rid.split("-")[2] for rid, _ in earlier] == ["0002", "0004", "0005"]
    assert all(message.endswith(first.job_id) for _, message in earlier)
    assert second.exported_now == 3 and second.status == "complete"


def test_the_state_key_option_of_the_job_file(tmp_path: Path) -> None:
    from portshift.errors import ConfigError
    from portshift.state.choose import open_chosen_state

    out = tmp_path / "out"
    doc = job_doc(out)
    doc["source"] = {"type": "example"}
    for bad, says in (("nope", "does not name a key"), ("vault:x", "unknown key provider type 'vault'")):
        with pytest.raises(ConfigError, match=says):
            load_job(None, doc={**doc, "state": {"key": bad}})
    path = key_file(tmp_path)
    cfg = load_job(None, doc={**doc, "state": {"key": f"file:{path}"}})
    with open_chosen_state(str(tmp_path / "state.db"), cfg.state) as state:
        assert state.seals.provider is not None and state.seals.provider.label == f"file:{path}"
    with open_chosen_state(str(tmp_path / "state.db"), load_job(None, doc=doc).state) as state:
        assert state.seals.provider is None  # no key: new jobs stay clear


def test_a_job_sealed_by_a_provider_not_installed_lists_as_sealed(state_backend: StateBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job_id = run_sealed(state_backend, job_doc(out, count=2), f"file:{key_file(tmp_path)}").job_id
    with state_backend.open() as state:
        state._write("as if", "update job_keys set key_label = ? where job_id = ?", ["vault:transit/portshift", job_id])
    with state_backend.open() as state:
        job = state.job(job_id)
        assert job is not None and job.status.value == "complete" and job.file_count == 4
        assert job.sealed is not None and "unknown key provider type 'vault'" in job.sealed


def test_a_key_that_cannot_be_used_is_asked_once_per_listing(tmp_path: Path) -> None:
    """`portshift jobs` reads 50 jobs: a key that is gone is one wait, not 50."""
    backend = StateBackend("sqlite", str(tmp_path / "state.db"))
    out = tmp_path / "out"
    out.mkdir()
    path = key_file(tmp_path)
    for new in (False, True, True):
        run_sealed(backend, job_doc(out, count=1), f"file:{path}", RunRequest(new=new))
    path.unlink()
    asked: list[str] = []

    class Counting(LocalKeyFile):
        def unwrap(self, wrapped: bytes, job_id: str) -> bytes:
            asked.append(job_id)
            return super().unwrap(wrapped, job_id)

    with backend.open() as state:
        state.seals._providers[f"file:{path}"] = Counting(str(path))
        jobs = state.jobs()
        assert len(jobs) == 3 and all(j.sealed and "does not exist" in j.sealed for j in jobs)
    assert len(asked) == 1
