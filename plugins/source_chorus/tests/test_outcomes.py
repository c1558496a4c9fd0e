"""Issue 22: no listed call is lost without a word, nothing changes the tenant, and the archive
gets what it needs. Every behaviour of a real tenant that could lose a call is a simulator switch."""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from portshift_source_chorus.simulator import Behaviour, ChorusSimulator, Faults, Paging

from portshift import AuthError, SourceError

from .conftest import CANARY, WINDOW, check_export, export_all, make_source, read, tenant


@pytest.fixture
def own() -> Iterator[Any]:
    """A simulator of its own per test (a test may change its tenant), from a tenant spec."""
    started: list[ChorusSimulator] = []

    def start(**spec: Any) -> ChorusSimulator:
        behaviour = spec.pop("behaviour", None)
        sim = ChorusSimulator(tenant(**spec), token=CANARY, behaviour=behaviour).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


# --- every listed call: exported, pending or skipped with its reason --------------------------------
def test_every_listed_call_is_yielded_once_with_its_outcome(sim: ChorusSimulator) -> None:
    got = export_all(make_source(sim))
    check_export(sim, got)
    outcomes = sim.tenant.outcomes(WINDOW.start, WINDOW.end).values()
    assert any(o.startswith("pending:") for o in outcomes), "the tenant must hold unprocessed calls"
    assert got.pending and got.files


def test_unprocessed_calls_are_pending_then_exported_once_done(own: Any) -> None:
    sim = own(unprocessed_ratio=0.3)
    first = export_all(make_source(sim))
    check_export(sim, first)
    pending = dict(first.pending)
    assert len(pending) >= 5 and set(pending.values()) <= {"processing", "live", "scheduled"}
    assert not set(pending) & set(first.files)
    # Chorus finishes processing between the runs: the next run exports them
    assert set(pending) <= set(sim.tenant.finish_processing())
    second = export_all(make_source(sim))
    check_export(sim, second)
    assert not second.pending
    assert set(pending) <= set(second.files) | set(second.skipped)
    assert [cid for cid in pending if cid in second.files]


def test_recorded_no_shows_are_exported(own: Any) -> None:
    sim = own(no_show_ratio=0.4, recorded_no_show=True)
    got = export_all(make_source(sim))
    check_export(sim, got)
    recorded = [c.engagement_id for c in sim.tenant.exportable() if c.no_show and not c.hidden]
    assert len(recorded) >= 5 and set(recorded) <= set(got.files)
    assert all(sorted(got.files[cid]) == ["captions", "media", "metadata", "transcript"] for cid in recorded)


def test_no_shows_with_nothing_recorded_are_skipped_with_that_reason(own: Any) -> None:
    sim = own(no_show_ratio=0.4, recorded_no_show=False, unprocessed_ratio=0)
    got = export_all(make_source(sim))
    check_export(sim, got)
    no_shows = [c.engagement_id for c in sim.tenant.listed(WINDOW.start, WINDOW.end) if c.no_show]
    assert len(no_shows) >= 5 and all(got.skipped[cid] == "no_show" for cid in no_shows)
    # include_no_show: their listing item is kept (metadata only)
    kept = export_all(make_source(sim, include_no_show=True))
    check_export(sim, kept, include_no_show=True)
    assert all(sorted(kept.files[cid]) == ["metadata"] for cid in no_shows)


def test_a_media_404_keeps_the_transcript_and_metadata(own: Any) -> None:
    sim = own(media_missing_ratio=0.3, not_found_ratio=0.1, forbidden_ratio=0)
    got = export_all(make_source(sim))
    check_export(sim, got)  # media reported missing ("media_not_found"), the other three files exported
    gone = [c.engagement_id for c in sim.tenant.exportable() if c.media_missing and not c.hidden]
    assert len(gone) >= 3
    for cid in gone:
        assert got.missing[cid] == {"media": "media_not_found"}
        assert sorted(got.files[cid]) == ["captions", "metadata", "transcript"]
    # only a call whose conversation itself is not found is skipped
    hidden = [c.engagement_id for c in sim.tenant.exportable() if c.hidden == "not_found"]
    assert hidden and all(got.skipped[cid] == "not_found" for cid in hidden)


def test_strict_fails_a_missing_media_instead(own: Any) -> None:
    sim = own(media_missing_ratio=1.0, not_found_ratio=0, forbidden_ratio=0)
    source = make_source(sim, strict=True, artifacts=["media"])
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None)
    (media,) = source.artifacts(rec)
    with pytest.raises(SourceError, match="HTTP 404"):
        read(media)


# --- nothing changes the tenant ------------------------------------------------------------------
def test_an_export_writes_nothing_and_generates_no_summary(own: Any) -> None:
    sim = own(summary_ratio=0.0)
    got = export_all(make_source(sim, artifacts=["media", "transcript", "captions", "metadata", "summary", "action_items"]))
    assert got.files and sim.stats.writes == [] and not sim.tenant.generated
    queries = sim.stats.conversation_queries
    assert queries and all(q.get("skip_summary_generation") == "true" for q in queries)


def test_the_simulator_sees_a_read_that_would_generate_or_write(sim: ChorusSimulator) -> None:
    """The control for the test above: what a careless client would do is recorded."""
    call = next(c for c in sim.tenant.exportable() if not c.hidden)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_path)), headers={"Authorization": CANARY}) as c:
        r = c.get(f"{sim.base_url}/api/v1/conversations/{call.engagement_id}", headers={"Accept": "application/vnd.api+json"})
        assert r.status_code == 200
        r = c.post(f"{sim.base_url}/api/v1/conversations:export", json={"start": 0, "end": 1})
        assert r.status_code == 405
    assert [w[2] for w in sim.stats.writes] == ["summary generation", "method"]
    assert call.engagement_id in sim.tenant.generated
    sim.tenant.generated.clear()


# --- trackers -----------------------------------------------------------------------------------
def test_trackers_are_asked_for_and_land_in_metadata(sim: ChorusSimulator) -> None:
    got = export_all(make_source(sim, artifacts=["metadata"]))
    assert sim.stats.list_queries and all(q.get("with_trackers") == "true" for q in sim.stats.list_queries)
    for files in got.files.values():
        assert "tracker_matches" in json.loads(files["metadata"])
    # the simulator emits them only when asked, as the API does (with_trackers defaults to false)
    page = make_source(sim).client.list_page({"engagement_type": "meeting"})
    assert page["engagements"] and all("tracker_matches" not in e for e in page["engagements"])


# --- listing: no reliance on min_date/max_date ----------------------------------------------------
def test_listing_is_exact_when_the_date_filters_are_ignored(sim: ChorusSimulator) -> None:
    sim.configure(behaviour=Behaviour(ignore_date_filters=True), paging=Paging(page_sizes=(4,)))
    got = export_all(make_source(sim, artifacts=["metadata"], window_days=10))
    check_export(sim, got, artifacts=("metadata",))
    # each slice stops at its first page wholly older than its start (the page that crosses the
    # start, then one more): far fewer than walking the whole tenant once per slice
    calls = [c for c in sim.tenant.calls if c.listed]
    bound = 0
    slices = math.ceil((WINDOW.end - WINDOW.start).days / 10)
    for n in range(slices):
        lo = WINDOW.end.timestamp() - (n + 1) * 10 * 86400
        for kind in ("meeting", "dialer"):
            newer = sum(1 for c in calls if c.engagement_type == kind and c.date_time >= lo)
            total = sum(1 for c in calls if c.engagement_type == kind)
            bound += min(newer // 4 + 2, total // 4 + 1)
    full = slices * sum(math.ceil(sum(1 for c in calls if c.engagement_type == k) / 4) for k in ("meeting", "dialer"))
    assert sim.stats.requests["api:list"] <= bound < full


# --- rate: a 10-per-minute tenant, no Retry-After ------------------------------------------------------
def test_a_10_per_window_limit_without_retry_after_is_survived(sim: ChorusSimulator) -> None:
    """The tenant allows 10 requests per 1.5 s window (10/min at 40x speed) and says nothing
    about when to come back. The listing completes; the limiter slows down after the 429s."""
    sim.configure(faults=Faults(rate_window=(10, 1.5), rate_limit_retry_after=False), paging=Paging(page_sizes=(3,)))
    source = make_source(sim, artifacts=["metadata"], window_days=45, requests_per_second=40, burst=4)
    source.client.sleep = None  # really wait (the whole test takes a few seconds)
    source.client.backoff.base, source.client.backoff.cap = 0.05, 0.6
    ids = [r.id for r in source.recordings(WINDOW)]
    assert sorted(ids) == sorted(c.engagement_id for c in sim.tenant.listed(WINDOW.start, WINDOW.end))
    print(
        f"\n{sim.stats.total('api')} requests, {sim.stats.rate_limited} answered 429, rate now {source.client.limiter.rate:g}/s"
    )
    assert sim.stats.rate_limited > 0
    assert source.client.limiter.rate < 40  # slowed down


def test_the_same_limit_fails_the_old_fixed_retry_count(sim: ChorusSimulator) -> None:
    """The control: 5 retries from 0.05 s wait well under the 1.5 s window, and give up."""
    sim.configure(faults=Faults(rate_window=(10, 1.5), rate_limit_retry_after=False), paging=Paging(page_sizes=(3,)))
    source = make_source(sim, artifacts=["metadata"], window_days=45, requests_per_second=0, retry_budget=0)
    source.client.sleep = None
    source.client.backoff.base, source.client.backoff.cap = 0.05, 0.6
    with pytest.raises(SourceError, match="gave up") as e:
        list(source.recordings(WINDOW))
    assert e.value.status == 429


# --- e-mail, content_viewed, unrecorded_meeting -------------------------------------------------------
def test_engagements_without_a_recording_export_their_metadata(own: Any) -> None:
    sim = own(other_type_ratio=0.4, not_found_ratio=0, forbidden_ratio=0)
    emails = sim.tenant.listed(WINDOW.start, WINDOW.end, types=("email",))
    assert len(emails) >= 5
    got = export_all(make_source(sim, engagement_types=["email"], artifacts=["metadata", "email"]))
    assert sorted(got.listed) == sorted(c.engagement_id for c in emails)
    for c in emails:
        assert sorted(got.files[c.engagement_id]) == ["email", "metadata"]
        assert got.files[c.engagement_id]["email"] == sim.tenant.email_bytes(c.engagement_id)
    assert sim.stats.requests["api:media_api"] == 0 and sim.stats.requests["api:conversation"] == 0
    # nothing to export for them: skipped with that reason, never silently
    none = export_all(make_source(sim, engagement_types=["email"], artifacts=["media"]))
    assert none.skipped == {c.engagement_id: "no_recording" for c in emails}


# --- opt-in artifacts -----------------------------------------------------------------------------
def test_summary_and_action_items_where_the_conversation_carries_them(own: Any) -> None:
    sim = own(summary_ratio=0.5, not_found_ratio=0, forbidden_ratio=0)
    got = export_all(make_source(sim, artifacts=["metadata", "summary", "action_items"]))
    with_summary = [c for c in sim.tenant.exportable() if c.has_summary]
    without = [c for c in sim.tenant.exportable() if not c.has_summary]
    assert with_summary and without
    for c in with_summary:
        text, items = sim.tenant.summary(c)  # type: ignore[misc]
        assert json.loads(got.files[c.engagement_id]["summary"]) == {"summary": text}
        assert json.loads(got.files[c.engagement_id]["action_items"]) == {"action_items": items}
    for c in without:
        assert got.missing[c.engagement_id] == {"summary": "no_summary", "action_items": "no_action_items"}
    assert sim.stats.writes == [] and not sim.tenant.generated


def test_scorecards_are_matched_to_their_calls(own: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from portshift_source_chorus import extras

    monkeypatch.setattr(extras, "SCORECARD_PAGE", 5)  # several pages from a small tenant
    sim = own(scorecard_ratio=0.5, not_found_ratio=0, forbidden_ratio=0)
    got = export_all(make_source(sim, artifacts=["metadata", "scorecards"]))
    cards = sim.tenant.scorecards()
    assert len(cards) > 10
    by_call: dict[str, list[Any]] = {}
    for card in cards:
        by_call.setdefault(card["attributes"]["conversation_id"], []).append(card)  # type: ignore[index]
    exported = {cid: json.loads(f["scorecards"])["data"] for cid, f in got.files.items() if "scorecards" in f}
    assert exported and exported == {cid: cs for cid, cs in by_call.items() if cid in got.files}
    # the calls no scorecard names are reported, not silently without the file
    assert {cid for cid, m in got.missing.items() if m == {"scorecards": "no_scorecards"}} == set(got.files) - set(exported)
    # read once per run, every page
    assert sim.stats.requests["api:scorecards"] == len(cards) // 5 + 1


def test_scorecards_the_token_may_not_read_stop_with_the_permission_named(own: Any) -> None:
    sim = own(scorecard_ratio=0.5, behaviour=Behaviour(scorecards_forbidden=True))
    source = make_source(sim, artifacts=["scorecards"])
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and not sim.tenant.by_id[r.id].hidden)
    with pytest.raises(AuthError, match="scorecards"):
        source.artifacts(rec)
