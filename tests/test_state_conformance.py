"""The state interface, call by call, on both backends: the same answers from a SQLite file and a
PostgreSQL database (ids matched by prefix or suffix, bytewise key order, problems, pending,
earlier jobs, the sinks' journal, totals)."""

from __future__ import annotations

import time

import pytest

from portshift.records import JobStatus, Problem, RecordingStatus
from portshift.state import FileRecord, State

from .conftest import StateBackend


def _file(key: str, rec: str, artifact: str = "media", size: int = 3, kind: str = "content") -> FileRecord:
    return FileRecord(key=key, size=size, sha256="c" * 64, recording_id=rec, artifact=artifact, kind=kind)


@pytest.fixture
def state(state_backend: StateBackend):  # type: ignore[no-untyped-def]
    with state_backend.open() as s:
        yield s


def test_jobs_are_found_by_id_prefix_or_suffix_and_listed_newest_first(state: State) -> None:
    state.create_job(id="20240101T000000Z-aaa111", job_key="k", started_at="2024-01-01T00:00:00+00:00")
    state.create_job(id="20240102T000000Z-bbb222", job_key="k", started_at="2024-01-02T00:00:00+00:00")
    state.create_job(id="20240103T000000Z-a_c%33", job_key="other", started_at="2024-01-03T00:00:00+00:00")
    assert [j.id for j in state.jobs()] == ["20240103T000000Z-a_c%33", "20240102T000000Z-bbb222", "20240101T000000Z-aaa111"]
    assert state.job("bbb222").id == "20240102T000000Z-bbb222"  # suffix
    assert state.job("20240101").id == "20240101T000000Z-aaa111"  # prefix
    assert state.job("2024") is None and len(state.find_jobs("2024")) == 3  # ambiguous
    assert [j.id for j in state.find_jobs("a_c%33")] == ["20240103T000000Z-a_c%33"]
    assert state.find_jobs("_c%") == [] and state.find_jobs("2024%") == []  # LIKE wildcards are literal
    assert state.job("nope") is None
    job = state.job("aaa111")
    assert job.status is JobStatus.RUNNING and job.file_count == 0 and job.byte_count == 0
    assert job.skipped_count == 0 and job.pending_count == 0


def test_update_abandon_unfinished_and_last_complete(state: State) -> None:
    state.create_job(id="J1", job_key="k", window_end="2024-01-01", started_at="2024-01-01T00:00:00+00:00")
    state.create_job(id="J2", job_key="k", window_end="2024-02-01", started_at="2024-02-01T00:00:00+00:00")
    state.create_job(id="J3", job_key="k", window_end="2024-03-01", started_at="2024-03-01T00:00:00+00:00")
    state.update_job("J1", status=JobStatus.COMPLETE, file_count=4, byte_count=10, error=None)
    state.update_job("J2", status="complete")
    assert state.last_complete_job("k").id == "J2"
    assert state.unfinished_job("k").id == "J3"
    assert state.abandon_unfinished("k") == 1
    assert state.abandon_unfinished("k") == 0
    j3 = state.job("J3")
    assert j3.status is JobStatus.ABANDONED and j3.finished_at
    assert state.unfinished_job("k").id == "J3"  # abandoned is not complete
    assert state.unfinished_job("other") is None and state.last_complete_job("other") is None
    assert state.job("J1").file_count == 4 and state.job("J1").byte_count == 10


def test_recordings_problems_and_missing_artifacts(state: State) -> None:
    state.create_job(id="J", job_key="k")
    state.set_recording("J", "r2", RecordingStatus.FAILED, "Timeout", "m" * 600)
    state.set_recording("J", "r1", "done")
    state.set_recording("J", "r3", "skipped", "private", "a private call")
    state.set_recording("J", "r4", "pending", "processing", "", started_at="2024-01-01T10:00:00+00:00")
    state.set_recording("J", "r4", "pending", "processing", "still")  # keeps its start time
    state.add_missing("J", "r1", "transcript", "not_found", "no transcript")
    state.add_missing("J", "r1", "transcript", "not_found", "no transcript (again)")
    assert state.done_recordings("J") == {"r1"}
    assert state.recording_counts("J") == {"done": 1, "failed": 1, "skipped": 1, "pending": 1}
    problems = state.problems("J")
    assert problems == [
        Problem("r2", "failed", "Timeout", "m" * 500),
        Problem("r1", "missing", "not_found", "no transcript (again)", "transcript"),
        Problem("r4", "pending", "processing", "still"),
        Problem("r3", "skipped", "private", "a private call"),
    ]
    assert state.oldest_pending("k") == "2024-01-01T10:00:00+00:00"


def test_pending_and_earlier_exports_across_jobs_of_one_job_file(state: State) -> None:
    state.create_job(id="J1", job_key="k", window_end="2024-01-10T00:00:00+00:00")
    state.create_job(id="J2", job_key="k", window_end="2024-01-20T00:00:00+00:00")
    state.create_job(id="X", job_key="other", window_end="2024-01-20T00:00:00+00:00")
    state.set_recording("J1", "a", "pending", started_at="2024-01-05T00:00:00+00:00")
    state.set_recording("J1", "b", "pending", started_at="2024-01-06T00:00:00+00:00")
    state.set_recording("J1", "c", "done")
    state.set_recording("J2", "a", "done")  # exported since: no longer pending
    state.set_recording("X", "z", "pending", started_at="2020-01-01T00:00:00+00:00")
    assert state.oldest_pending("k") == "2024-01-06T00:00:00+00:00"
    assert state.oldest_pending("nothing") is None
    assert state.exported_by_earlier_jobs("k", "2024-01-01T00:00:00+00:00", "J2") == {"c": "J1"}
    assert state.exported_by_earlier_jobs("k", "2024-01-15T00:00:00+00:00", "J2") == {}
    assert state.exported_by_earlier_jobs("k", "2024-01-01T00:00:00+00:00", "J9") == {"c": "J1", "a": "J2"}


def test_files_sorted_bytewise_totals_and_removal(state: State) -> None:
    state.create_job(id="J", job_key="k")
    keys = ["b/x", "B/x", "a-b", "a_b", "a/b", "é", "Z", "a b"]
    for i, key in enumerate(keys):
        state.add_file("J", _file(key, f"r{i}", size=i + 1))
    state.add_file("J", _file("b/x", "r0", size=10))  # upsert: same key, new size
    state.add_file("J", _file("portshift-manifest.txt", "", artifact="manifest", size=99, kind="manifest"))
    listed = [f["key"] for f in state.files("J")]
    assert listed == sorted(keys, key=lambda k: k.encode())  # like `sort` in the C locale, as in SQLite
    first = next(iter(state.files("J")))
    assert set(first) == {"key", "size", "sha256", "recording_id", "artifact", "content_type", "recorded_at", "verified"}
    assert [f["key"] for f in state.files("J", kind="manifest")] == ["portshift-manifest.txt"]
    assert state.totals("J") == (8, 10 + sum(range(2, 9)))
    assert state.done_artifacts("J", "r1") == {"media"}
    assert state.last_file_done_at("J") is not None and state.last_file_done_at("nope") is None
    state.remove_files_of("J", "r1")
    assert state.done_artifacts("J", "r1") == set() and state.totals("J")[0] == 7
    state.remove_manifest_files("J")
    assert list(state.files("J", kind="manifest")) == []


def test_many_files_stream_in_order(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    import portshift.state.postgres

    monkeypatch.setattr(portshift.state.rows, "PAGE", 7)  # both backends read in pages
    state.create_job(id="J", job_key="k")
    n = 50
    for i in range(n):
        state.add_file("J", _file(f"{i:06d}/m", f"r{i}", size=1))
    keys = [f["key"] for f in state.files("J")]
    assert len(keys) == n and keys == sorted(keys) and len(set(keys)) == n


def test_the_sink_journal(state: State) -> None:
    state.create_job(id="J", job_key="k")
    journal = state.journal("J")
    journal.begin("a/key", {"upload_id": "u1"})
    journal.begin("b/key", {"upload_id": "u2"})
    journal.begin("a/key", {"upload_id": "u3"})  # replaced
    assert dict(journal.pending()) == {"a/key": {"upload_id": "u3"}, "b/key": {"upload_id": "u2"}}
    journal.end("a/key")
    assert journal.pending() == [("b/key", {"upload_id": "u2"})]
    assert state.journal("other").pending() == []


def test_an_entry_of_a_gone_worker_is_taken_over_by_one_worker_only(state: State) -> None:
    """An upload a gone worker left mid-file is continued by the worker that takes its entry: one
    only, and never the entry of a worker still alive."""
    state.create_job(id="J", job_key="k")
    for w in ("A", "B", "C"):
        state.register_worker("J", w, w, 1, 30.0)
    state.journal("J", "A").begin("big/key", {"upload_id": "u1", "resume": "{}"})
    state.journal("J", "B").begin("live/key", {"upload_id": "u2"})
    assert state.journal_take("J", "big/key", "C") is None  # A is alive: its entry stays its own
    state.end_worker("J", "A")
    assert [k for k, _ in state.journal_orphans("J")] == ["big/key"]
    assert state.journal_take("J", "big/key", "C") == {"upload_id": "u1", "resume": "{}"}
    assert state.journal_take("J", "big/key", "B") is None  # taken: C's now
    assert state.journal_take("J", "big/key", "C") == {"upload_id": "u1", "resume": "{}"}  # C's retry
    assert state.journal_orphans("J") == [] and dict(state.journal_pending("J", "C")) == {
        "big/key": {"upload_id": "u1", "resume": "{}"}
    }
    assert state.journal_take("J", "live/key", "C") is None
    assert state.journal_take("J", "no/such/key", "C") is None


def test_outcome_counts_listed_ids_and_earlier_exports(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    import portshift.state.postgres

    monkeypatch.setattr(portshift.state.rows, "PAGE", 3)  # listed ids are read in pages too
    state.create_job(id="J", job_key="k")
    ids = ["b", "B", "a-1", "a_1", "é", "Z", "c", "a"]
    for rid in ids:
        state.set_recording("J", rid, "done")
    state.set_recording("J", "c", RecordingStatus.SKIPPED, "private", "")
    state.set_recording("J", "Z", RecordingStatus.EXPORTED_EARLIER, "", "exported by job J0")
    state.add_missing("J", "a", "media", "media_not_found", "")
    assert list(state.listed_ids("J")) == sorted(ids, key=lambda i: i.encode())
    assert state.outcome_counts("J") == {
        "done": {"": 6},
        "skipped": {"private": 1},
        "exported_earlier": {"": 1},
        "missing": {"media_not_found": 1},
    }
    assert state.exported_earlier("J") == [("Z", "exported by job J0")]
    assert list(state.listed_ids("none")) == [] and state.outcome_counts("none") == {}


def test_a_shared_request_budget_is_cut_once_per_burst_of_429s(state: State) -> None:
    key = "source:J"
    wait, rate, cut_at = state.reserve_request(key, 10.0, 1.0)
    assert wait == 0.0 and rate == 10.0 and cut_at == 0.0  # never cut
    sent = time.time()
    first = state.throttle_requests(key, sent, 0.5)
    assert first is not None and first >= sent
    assert state.throttle_requests(key, sent, 0.5) is None  # sent before that cut: the same burst, no second cut
    _, rate, cut_at = state.reserve_request(key, 10.0, 1.0)
    assert rate == 5.0 and cut_at == first  # every worker paces by the cut rate and sees when it was made
    later = state.throttle_requests(key, first + 0.001, 0.5)  # a request sent after the cut: a new signal
    assert later is not None and later >= first
    assert state.reserve_request(key, 10.0, 1.0)[1] == 2.5
    assert state.throttle_requests("source:unknown", sent, 0.5) is None  # no budget yet: nothing to cut
