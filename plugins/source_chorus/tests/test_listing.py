"""Listing: windows walked newest first, continuation keys, end markers, duplicates, filters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from portshift_source_chorus.listing import pages, slices
from portshift_source_chorus.simulator import ChorusSimulator, Faults, MediaConfig, Paging

from portshift import RecordingPending, SkipRecording, Window

from .conftest import WINDOW, make_source

MARKERS = ["space", "missing", "empty", "null", "empty_page", "repeat", "mixed"]


def expected_ids(sim: ChorusSimulator, window: Window = WINDOW) -> list[str]:
    """Every call the API lists in the window: each is yielded, whatever becomes of it."""
    return sorted(c.engagement_id for c in sim.tenant.listed(window.start, window.end))


def listed(sim: ChorusSimulator, window: Window = WINDOW, limit: int = 2000, **kw: object) -> list[str]:
    """The ids the source lists; a listing that keeps asking (a loop) fails instead of hanging."""
    source = make_source(sim, **kw)
    real = source.client.list_page
    calls = 0

    def guarded(params: dict[str, str]) -> dict[str, object]:
        nonlocal calls
        calls += 1
        assert calls <= limit, "the listing does not end"
        return real(params)

    source.client.list_page = guarded  # type: ignore[method-assign]
    return [r.id for r in source.recordings(window)]


@pytest.mark.parametrize("marker", MARKERS)
def test_each_end_marker_ends_the_listing_with_every_call_once(sim: ChorusSimulator, marker: str) -> None:
    sim.configure(paging=Paging(page_sizes=(1, 4, 9), duplicates=3, end_marker=marker))
    ids = listed(sim)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == expected_ids(sim)
    # no loop: at most one extra page per query beyond what the calls need
    queries = sim.stats.requests["api:list"]
    assert queries <= len(sim.tenant.calls) + 2 * 14 * 2


def test_filters_are_resent_with_every_page(sim: ChorusSimulator) -> None:
    sim.configure(paging=Paging(page_sizes=(3,)))
    ids = listed(sim, window_days=30)
    assert sorted(ids) == expected_ids(sim)
    follow_ups = [q for q in sim.stats.list_queries if "continuation_key" in q]
    assert follow_ups, "the test needs pages after the first"
    for q in sim.stats.list_queries:
        assert {"min_date", "max_date", "engagement_type"} <= set(q)
        assert q["engagement_type"] in ("meeting", "dialer")


def test_windows_are_walked_newest_first(sim: ChorusSimulator) -> None:
    ids = listed(sim, window_days=10)
    starts = [sim.tenant.by_id[i].date_time for i in ids]
    # within a slice meetings come before dialers; across slices, time goes backwards
    firsts = [q["min_date"] for q in sim.stats.list_queries if "continuation_key" not in q]
    assert firsts == sorted(firsts, reverse=True)
    assert starts[0] >= starts[-1]


def test_slices_cover_the_window_exactly() -> None:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    end = datetime(2024, 1, 10, 12, tzinfo=timezone.utc)
    parts = list(slices(start, end, 2))
    assert parts[0][1] == end and parts[-1][0] == start
    for (lo1, _), (_, hi2) in zip(parts, parts[1:]):
        assert hi2 == lo1
    assert all(hi - lo <= timedelta(days=2) for lo, hi in parts)


def test_a_call_on_a_slice_boundary_is_listed_once(sim: ChorusSimulator) -> None:
    call = sim.tenant.exportable()[5]
    t = call.started_at
    window = Window(t - timedelta(days=3), t + timedelta(days=3))
    ids = listed(sim, window, window_days=3)  # the boundary between the two slices is t itself
    assert ids.count(call.engagement_id) == 1
    assert sorted(ids) == expected_ids(sim, window)


def test_the_window_end_is_exclusive(sim: ChorusSimulator) -> None:
    call = sim.tenant.exportable()[7]
    t = call.started_at
    assert call.engagement_id not in listed(sim, Window(t - timedelta(days=1), t))
    assert call.engagement_id in listed(sim, Window(t, t + timedelta(seconds=1)))


def test_unprocessed_no_show_and_unrecorded_calls_are_yielded_with_their_outcome(sim: ChorusSimulator) -> None:
    """Nothing the API lists is dropped: a call not processed yet is pending, one with nothing
    recorded is skipped with that reason, a recorded no-show is exported (issue 22)."""
    calls = sim.tenant.calls
    assert any(c.processing_state != "done" for c in calls) and any(c.no_show for c in calls)
    source = make_source(sim)
    recs = {r.id: r for r in source.recordings(WINDOW)}
    assert sorted(recs) == expected_ids(sim)
    for cid, outcome in sim.tenant.outcomes(WINDOW.start, WINDOW.end).items():
        rec = recs[cid]
        kind, _, reason = outcome.partition(":")
        if kind == "export":
            assert rec.skipped is None
        elif kind == "pending":
            assert isinstance(rec.skipped, RecordingPending) and rec.skipped.reason == reason
        else:
            assert isinstance(rec.skipped, SkipRecording) and not isinstance(rec.skipped, RecordingPending)
            assert rec.skipped.reason == reason and str(rec.skipped)
    assert {r.skipped.reason for r in recs.values() if r.skipped} >= {"no_recording"} or any(
        isinstance(r.skipped, RecordingPending) for r in recs.values()
    )
    # include_unprocessed: exported as they are now, not pending
    eager = {r.id: r for r in make_source(sim, include_unprocessed=True).recordings(WINDOW)}
    assert not any(isinstance(r.skipped, RecordingPending) for r in eager.values())
    private = [c.engagement_id for c in calls if c.private]
    assert private and not set(private) & set(eager)


def test_engagement_types_option(sim: ChorusSimulator) -> None:
    ids = listed(sim, engagement_types=["dialer"])
    assert ids and all(sim.tenant.by_id[i].engagement_type == "dialer" for i in ids)
    assert sorted(ids) == sorted(c.engagement_id for c in sim.tenant.listed(WINDOW.start, WINDOW.end, types=("dialer",)))


def test_pages_stops_on_every_end_condition() -> None:
    def run(script: list[dict[str, object]]) -> tuple[list[object], int]:
        calls = []

        def get(params: dict[str, str]) -> dict[str, object]:
            calls.append(params)
            return script[len(calls) - 1]

        items = [i for page in pages(get, {"f": "1"}) for i in page]
        assert all(c["f"] == "1" for c in calls)
        return items, len(calls)

    more = {"engagements": [1], "continuation_key": "k1"}
    assert run([{"engagements": [1]}]) == ([1], 1)
    assert run([more, {"engagements": [2], "continuation_key": " "}]) == ([1, 2], 2)
    assert run([more, {"engagements": [2], "continuation_key": ""}]) == ([1, 2], 2)
    assert run([more, {"engagements": [2], "continuation_key": None}]) == ([1, 2], 2)
    assert run([more, {"engagements": [2], "continuation_key": 17}]) == ([1, 2], 2)
    assert run([more, {"engagements": [], "continuation_key": "k2"}]) == ([1], 2)
    assert run([more, {"engagements": [2], "continuation_key": "k1"}]) == ([1, 2], 2)
    k2 = {"engagements": [2], "continuation_key": "k2"}
    assert run([more, k2, {"engagements": [3], "continuation_key": "k1"}]) == ([1, 2, 3], 3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4),
    duplicates=st.integers(min_value=0, max_value=6),
    marker=st.sampled_from(MARKERS),
    window_days=st.sampled_from([0.5, 1.0, 3.0, 9.5, 31.0, 120.0]),
    offset_hours=st.integers(min_value=0, max_value=24 * 80),
    span_hours=st.integers(min_value=1, max_value=24 * 95),
)
def test_property_every_call_listed_exactly_once(
    simulator: ChorusSimulator,
    sizes: list[int],
    duplicates: int,
    marker: str,
    window_days: float,
    offset_hours: int,
    span_hours: int,
) -> None:
    """However the simulator splits pages (sizes, duplicates, end markers) and however the
    window is sliced, each call of the window is listed exactly once."""
    simulator.configure(faults=Faults(), media=MediaConfig(), paging=Paging(tuple(sizes), duplicates, marker))
    try:
        start = datetime(2023, 12, 25, tzinfo=timezone.utc) + timedelta(hours=offset_hours)
        window = Window(start, start + timedelta(hours=span_hours))
        ids = listed(simulator, window, window_days=window_days)
        assert len(ids) == len(set(ids))
        assert sorted(ids) == expected_ids(simulator, window)
    finally:
        simulator.configure(paging=Paging())
