"""A whole window exported through the source, every byte compared with the tenant's truth."""

from __future__ import annotations

import hashlib
import json

import pytest
from portshift_source_chorus.captions import webvtt
from portshift_source_chorus.simulator import Behaviour, ChorusSimulator, MediaConfig, Paging

from .conftest import WINDOW, check_export, export_all, make_source, read


def test_every_visible_call_once_every_artifact_correct(sim: ChorusSimulator) -> None:
    source = make_source(sim)
    got = export_all(source)
    check_export(sim, got)
    assert {"not_found", "forbidden"} <= set(got.skipped.values())
    # the conversation document is fetched once per recorded call and shared by transcript and captions
    recorded = [cid for cid, o in sim.tenant.outcomes(WINDOW.start, WINDOW.end).items() if o == "export"]
    assert sim.stats.requests["api:conversation"] == len(recorded)
    assert sim.stats.requests["api:media_api"] == len(got.files)  # skipped calls stop at the document
    # media by redirect: one link per download, every download on the media host
    assert sim.stats.links_issued == sim.stats.requests["media:media"] == len(got.files)


@pytest.mark.parametrize(
    "media",
    [
        MediaConfig(mode="json", json_shape="flat"),
        MediaConfig(mode="json", json_shape="jsonapi"),
        MediaConfig(mode="direct"),
        MediaConfig(mode="redirect", redirect_status=307),
        MediaConfig(mode="redirect", host="localhost"),
    ],
    ids=["json-flat", "json-jsonapi", "direct", "redirect-307", "redirect-other-name"],
)
def test_media_modes(sim: ChorusSimulator, media: MediaConfig) -> None:
    sim.configure(media=media)
    got = export_all(make_source(sim, artifacts=["media"]))
    check_export(sim, got, artifacts=("media",))
    if media.mode == "direct":
        assert sim.stats.total("media") == 0
    else:
        assert sim.stats.requests["media:media"] == len(got.files)


def test_info_mode_asks_for_the_json_link(sim: ChorusSimulator) -> None:
    got = export_all(make_source(sim, artifacts=["media"], media_info=True))
    check_export(sim, got, artifacts=("media",))
    assert sim.stats.statuses["api:302"] == 0 and sim.stats.statuses["api:200"] > 0


def test_only_media_asks_the_document_for_presence_only(sim: ChorusSimulator) -> None:
    """The conversation proves the call is visible before its media is asked for (a media 404
    then means the media alone is missing), with the smallest ``fields``: no utterances."""
    got = export_all(make_source(sim, artifacts=["media"]))
    assert sim.stats.requests["api:conversation"] == len(got.files) + sum(
        1 for r in got.skipped.values() if r in ("not_found", "forbidden")
    )
    assert sim.stats.conversation_queries and all(q["fields"] == "name,status" for q in sim.stats.conversation_queries)


def test_metadata_only_needs_the_listing(sim: ChorusSimulator) -> None:
    got = export_all(make_source(sim, artifacts=["metadata"]))
    check_export(sim, got, artifacts=("metadata",))
    assert sim.stats.requests["api:conversation"] == 0 and sim.stats.requests["api:media_api"] == 0


def test_metadata_of_a_call_not_in_the_cache_is_listed_ahead_from_its_time(sim: ChorusSimulator) -> None:
    """A worker that did not list the job (or evicted the call) lists from the call's start on and
    keeps what it finds: the calls claimed after it (oldest first) need no request of their own."""
    sim.configure(paging=Paging(page_sizes=(100,)))
    lister = make_source(sim, artifacts=["metadata"])
    recs = sorted((r for r in lister.recordings(WINDOW) if r.skipped is None), key=lambda r: (r.started_at, r.id))
    lister.close()
    worker = make_source(sim, artifacts=["metadata"])  # another process: nothing listed here
    before = sim.stats.requests["api:list"]
    for rec in recs:
        (artifact,) = worker.artifacts(rec)
        data, _ = read(artifact)
        assert json.loads(data) == sim.tenant.engagement(sim.tenant.by_id[rec.id])
    asked = sim.stats.requests["api:list"] - before
    assert 0 < asked <= len(recs) // 3, f"{asked} listing requests for {len(recs)} calls"
    assert not any(q.get("engagement_id") for q in sim.stats.list_queries)  # none asked for by id
    worker.close()


def test_metadata_of_a_call_not_found_ahead_is_fetched_by_id(sim: ChorusSimulator) -> None:
    """A tenant that ignores the date filters lists newest first from its last call: a call the
    look ahead does not reach in its pages is asked for by id."""
    sim.configure(behaviour=Behaviour(ignore_date_filters=True), paging=Paging(page_sizes=(2,)))
    source = make_source(sim, artifacts=["metadata"])
    meetings = [r for r in source.recordings(WINDOW) if r.skipped is None and r.fields["type"] == "meeting"]
    rec = min(meetings, key=lambda r: r.started_at)
    assert len(meetings) > 3 * 2  # beyond the look ahead's pages
    source._metadata.clear()
    before = sim.stats.requests["api:list"]
    (artifact,) = source.artifacts(rec)
    data, _ = read(artifact)
    assert json.loads(data) == sim.tenant.engagement(sim.tenant.by_id[rec.id])
    assert sim.stats.requests["api:list"] > before
    assert any(q.get("engagement_id") == rec.id for q in sim.stats.list_queries)


def test_reopening_media_downloads_again(sim: ChorusSimulator) -> None:
    source = make_source(sim, artifacts=["media"])
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and not sim.tenant.by_id[r.id].hidden)
    (media,) = source.artifacts(rec)
    first, _ = read(media)
    second, _ = read(media)
    assert first == second and len(first) == sim.tenant.media_size(rec.id)
    assert sim.stats.links_issued == 2  # each open asks for a fresh link


def test_a_partly_read_media_can_be_closed_and_reopened(sim: ChorusSimulator) -> None:
    source = make_source(sim, artifacts=["media"], chunk_size=4096)
    big = next(c for c in sim.tenant.exportable() if c.media_size > 1_000_000)
    rec = next(r for r in source.recordings(WINDOW) if r.id == big.engagement_id)
    (media,) = source.artifacts(rec)
    opened = media.open()
    next(opened.chunks)
    assert opened.close is not None
    opened.close()
    data, _ = read(media)
    assert hashlib.sha256(data).hexdigest() == sim.tenant.media_sha256(big.engagement_id)


def test_recordings_carry_id_start_and_type(sim: ChorusSimulator) -> None:
    recs = list(make_source(sim).recordings(WINDOW))
    assert recs
    for rec in recs:
        call = sim.tenant.by_id[rec.id]
        assert rec.started_at is not None and rec.started_at.tzinfo is not None
        assert rec.started_at.timestamp() == call.date_time
        assert rec.fields == {"type": call.engagement_type}


def test_captions_follow_the_utterances(sim: ChorusSimulator) -> None:
    """An independent reading of the VTT: cues in index order, times and speakers right, text
    escaped so that a player shows it verbatim."""
    source = make_source(sim, artifacts=["transcript", "captions"])
    checked = 0
    for rec in source.recordings(WINDOW):
        call = sim.tenant.by_id[rec.id]
        if call.hidden or rec.skipped is not None:
            continue
        arts = {a.name: read(a)[0] for a in source.artifacts(rec)}
        utts = sorted(sim.tenant.utterances(call), key=lambda u: u["index"])
        blocks = arts["captions"].decode().split("\n\n")
        assert blocks[0] == "WEBVTT"
        cues = [b for b in blocks[1:] if b.strip()]
        assert len(cues) == len(utts)
        for n, (cue, u) in enumerate(zip(cues, utts), 1):
            number, times, text = cue.strip("\n").split("\n")
            assert number == str(n)
            start, arrow, end = times.split(" ")
            assert arrow == "-->"
            assert _secs(start) == pytest.approx(u["snippet_time"], abs=0.001)
            assert _secs(end) == pytest.approx(u["snippet_time"] + u["snippet_length"], abs=0.001)
            expected = u["snippet"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            assert text == f"<v {u['speaker_name']}>{expected}"
            assert "-->" not in text
        checked += 1
    assert checked > 10


def _secs(ts: str) -> float:
    h, m, s = ts.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_webvtt_edge_cases() -> None:
    doc = {
        "data": {
            "attributes": {
                "recording": {
                    "utterances": [
                        {"index": 2, "snippet": "second\nline", "snippet_time": 3725.5, "snippet_length": 0},
                        {"index": 1, "snippet": "first", "snippet_time": 1, "snippet_length": 2.25, "speaker_name": "A <B>"},
                        {"index": 3, "snippet": "   ", "snippet_time": 9},
                        "not an utterance",
                        {"snippet": "no index", "snippet_time": "garbage", "snippet_length": None},
                    ]
                }
            }
        }
    }
    assert webvtt(doc) == (
        "WEBVTT\n\n"
        "1\n00:00:01.000 --> 00:00:03.250\n<v A &lt;B&gt;>first\n\n"
        "2\n01:02:05.500 --> 01:02:05.501\nsecond line\n\n"
        "3\n00:00:00.000 --> 00:00:00.001\nno index\n"
    )
    assert webvtt({}) == "WEBVTT\n"
    assert webvtt({"data": {"attributes": {"recording": {"utterances": None}}}}) == "WEBVTT\n"
