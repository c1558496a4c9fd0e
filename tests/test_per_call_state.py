"""The state's work per exported call (issue 16's many-small-calls figure): a recording's small
files are recorded with its outcome in one transaction, and a worker with no request ceiling
does not read the shared pause before every request. Both state backends."""

from __future__ import annotations

import time

from portshift.pipeline.shared_rate import PAUSE_LOOK, StateRate
from portshift.records import RecordingStatus
from portshift.state import FileRecord

from .conftest import StateBackend


def _files(rid: str) -> list[FileRecord]:
    return [FileRecord(f"J/{rid}/{name}.json", 10 + n, f"{n}" * 64, rid, name) for n, name in enumerate(("a", "b", "c"))]


def test_a_recordings_files_are_recorded_with_its_outcome(state_backend: StateBackend) -> None:
    with state_backend.open() as state:
        state.create_job(id="J", job_key="k", export_root="J")
        state.register_worker("J", "w1", "worker 1", 1, 60.0)
        state.add_todo("J", [("r1", None, "{}"), ("r2", None, "{}")])
        claimed = {c.id for c in state.claim("J", "w1", 2)}
        assert claimed == {"r1", "r2"}
        assert state.finish_claim("J", "r1", "w1", RecordingStatus.DONE, files=_files("r1"))
        assert state.done_artifacts("J", "r1") == {"a", "b", "c"}
        assert state.totals("J") == (3, 10 + 11 + 12)
        assert state.recording_counts("J") == {"done": 1, "todo": 1}
        # an outcome for a recording this worker no longer holds is not recorded (nothing twice),
        # and the files the sink confirmed are kept either way (the next holder overwrites them)
        assert not state.finish_claim("J", "r1", "w1", RecordingStatus.FAILED, "X", "again", files=_files("r1"))
        assert not state.finish_claim("J", "r2", "w2", RecordingStatus.DONE, files=_files("r2"))
        assert state.recording_counts("J") == {"done": 1, "todo": 1}
        assert state.done_artifacts("J", "r2") == {"a", "b", "c"}
        # a failed recording keeps the files stored before the failure, in the same transaction
        assert state.finish_claim("J", "r2", "w1", RecordingStatus.FAILED, "SourceError", "boom", files=_files("r2")[:1])
        assert state.recording_counts("J") == {"done": 1, "failed": 1}
        assert [f["key"] for f in state.files("J")] == [f.key for f in _files("r1") + _files("r2")]


def test_add_files_records_several_files_at_once(state_backend: StateBackend) -> None:
    with state_backend.open() as state:
        state.create_job(id="J", job_key="k", export_root="J")
        state.add_files("J", _files("r1"))
        state.add_files("J", _files("r1")[:1])  # again: the row is replaced, not doubled
        assert state.done_artifacts("J", "r1") == {"a", "b", "c"}
        assert state.totals("J")[0] == 3


def test_without_a_ceiling_a_shared_pause_is_seen_within_a_look(state_backend: StateBackend) -> None:
    with state_backend.open() as one, state_backend.open() as other:
        mine, theirs = StateRate(one, "source:J"), StateRate(other, "source:J")
        assert mine.reserve(0.0, 1.0) == (0.0, 0.0)
        theirs.pause(3.0)  # another worker saw a 429 with Retry-After: 3
        assert theirs.reserve(0.0, 1.0)[0] > 2.5  # its own pause holds at once
        time.sleep(PAUSE_LOOK)
        wait, rate = mine.reserve(0.0, 1.0)
        assert 2.0 < wait <= 3.0 and rate == 0.0
        # with a ceiling, every request takes its own slot in the state (none shared twice)
        assert one.reserve_request("source:K", 10.0, 1.0)[0] == 0.0
        assert StateRate(other, "source:K").reserve(10.0, 1.0)[0] > 0.05


def test_fewer_collections_during_a_transfer_is_undone_at_its_end() -> None:
    import gc

    from portshift.pipeline.collector import YOUNG_THRESHOLD, fewer_collections

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with fewer_collections():
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD and gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > frozen  # what existed at the start is not walked again
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # a service's later jobs collect it all
