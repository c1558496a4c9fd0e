"""Every fault of the simulator, over HTTPS: the export still holds every visible call exactly
once with correct bytes, or it fails loudly; nothing truncated ever reads as complete."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest
from portshift_source_chorus import ChorusSource
from portshift_source_chorus.simulator import ChorusSimulator, Fault, Faults, Paging

from portshift.errors import AuthError, SkipRecording, SourceError
from portshift.secrets import Secret

from .conftest import WINDOW, Sleeps, check_export, export_all, make_source, options, read

ALL = ("list", "conversation", "media_api", "media")


def visible_media(sim: ChorusSimulator, source: ChorusSource, min_size: int = 2):  # type: ignore[no-untyped-def]
    for rec in source.recordings(WINDOW):
        call = sim.tenant.by_id[rec.id]
        if rec.skipped is None and not call.hidden and call.media_size >= min_size:
            yield rec


# --- 429 and Retry-After ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [("1", 1.0, 1.0), ("date:3", 1.0, 3.0)],
    ids=["delta-seconds", "http-date"],
)
def test_retry_after_is_honoured(sim: ChorusSimulator, retry_after: str, low: float, high: float) -> None:
    sim.configure(faults=Faults(throttle=Fault(ratio=0.3, times=1, on=ALL), retry_after=retry_after))
    sleeps = Sleeps()
    source = make_source(sim, sleeps)
    # The shared limiter's pause is recorded, not slept (it would wait for real: minutes in all);
    # test_retry_after_really_waits_and_pauses_the_limiter proves the real pause.
    pauses: list[float] = []
    source.client.limiter.pause = pauses.append  # type: ignore[method-assign]
    got = export_all(source)
    check_export(sim, got)
    assert sim.stats.throttled >= 5
    assert len(sleeps.delays) == sim.stats.throttled
    assert all(low <= d <= high for d in sleeps.delays), sleeps.delays
    # every 429 from the API holds the other workers back (the media host's 429s pace only their own thread)
    assert len(pauses) == sim.stats.statuses["api:429"] >= 1, (len(pauses), dict(sim.stats.statuses))
    assert all(low <= d <= high for d in pauses), pauses


@pytest.mark.parametrize("retry_after", ["0", "garbage", "none", "-5"])
def test_useless_retry_after_falls_back_to_backoff(sim: ChorusSimulator, retry_after: str) -> None:
    sim.configure(faults=Faults(throttle=Fault(ratio=0.3, times=2, on=ALL), retry_after=retry_after))
    sleeps = Sleeps()
    got = export_all(make_source(sim, sleeps, backoff_base=0.01, backoff_cap=0.05, artifacts=["media"]))
    check_export(sim, got, artifacts=("media",))
    assert sim.stats.throttled >= 5
    assert len(sleeps.delays) == sim.stats.throttled
    assert all(0.005 <= d <= 0.05 for d in sleeps.delays), sleeps.delays
    # exponential: a resource's second retry waits between half and all of twice the base
    assert max(sleeps.delays) > 0.01


def test_retry_after_really_waits_and_pauses_the_limiter(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(throttle=Fault(ratio=1.0, times=1, on=("list",)), retry_after="1"))
    source = make_source(sim, requests_per_second=100, burst=1)
    source.client.sleep = time.sleep
    t0 = time.monotonic()
    page = source.client.list_page({"engagement_type": "meeting"})
    assert page["engagements"]
    assert time.monotonic() - t0 >= 0.95
    assert source.client.limiter._paused_until > 0  # the other workers were held back too


def test_retry_after_is_capped(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(throttle=Fault(ratio=1.0, times=1, on=("list",)), retry_after="86400"))
    sleeps = Sleeps()
    make_source(sim, sleeps, max_retry_after=2).client.list_page({})
    assert sleeps.delays == [2.0]


def test_429_forever_gives_up_with_a_retryable_error(sim: ChorusSimulator) -> None:
    """429s are retried past ``retries`` while the waiting stays within ``retry_budget``."""
    sim.configure(faults=Faults(throttle=Fault(ratio=1.0, times=-1, on=("conversation",)), retry_after="none"))
    sleeps = Sleeps()
    source = make_source(sim, sleeps, retries=3, backoff_base=0.01, backoff_cap=0.01, retry_budget=0.1)
    rec = next(visible_media(sim, source))
    with pytest.raises(SourceError) as e:
        source.artifacts(rec)
    assert e.value.retryable and e.value.status == 429
    tries = sim.stats.requests["api:conversation"]
    assert f"gave up after {tries} attempts" in str(e.value) and "Too Many Requests" in str(e.value)
    # past the 4 attempts ``retries`` gives other failures, within 0.1 s of waiting in all
    assert tries > 4 and 0.1 - 0.01 < sum(sleeps.delays) <= 0.1


# --- rate limits ------------------------------------------------------------------------------
def test_the_limiter_keeps_under_the_server_enforced_limit(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(rate_limit=40, rate_limit_burst=2), paging=Paging(page_sizes=(1,)))
    source = make_source(sim, requests_per_second=30, burst=1, artifacts=["metadata"], window_days=45)
    ids = [r.id for r in source.recordings(WINDOW)]
    assert len(ids) == len(set(ids)) and sim.stats.total("api") >= 40
    assert sim.stats.rate_limited == 0
    assert sim.stats.max_in_window(1.0) <= 30 + 1


def test_without_the_limiter_the_server_limit_is_hit(sim: ChorusSimulator) -> None:
    """The control for the test above: the same listing, no client-side ceiling."""
    sim.configure(faults=Faults(rate_limit=40, rate_limit_burst=2, rate_limit_retry_after=False), paging=Paging(page_sizes=(1,)))
    sleeps = Sleeps(scale=1.0)
    source = make_source(sim, sleeps, requests_per_second=0, retries=15, artifacts=["metadata"], window_days=45)
    ids = [r.id for r in source.recordings(WINDOW)]
    assert sorted(ids) == sorted(c.engagement_id for c in sim.tenant.listed())
    assert sim.stats.rate_limited > 0


# --- 5xx, resets, truncation, slowness ----------------------------------------------------------
def test_server_errors_are_retried(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(server_error=Fault(ratio=0.5, times=2, on=ALL)))
    got = export_all(make_source(sim))
    check_export(sim, got)
    assert sim.stats.statuses["api:500"] + sim.stats.statuses["media:500"] >= 10


def test_a_500_forever_names_the_error(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(server_error=Fault(ratio=1.0, times=-1, on=("list",))))
    with pytest.raises(SourceError) as e:
        list(make_source(sim, retries=2).recordings(WINDOW))
    assert "Internal Server Error: simulated failure" in str(e.value) and e.value.status == 500


def test_resets_mid_body_are_resumed_or_retried(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(reset=Fault(ratio=0.5, times=1, on=ALL)))
    got = export_all(make_source(sim))
    check_export(sim, got)
    assert sim.stats.statuses["media:206"] > 0  # media continued with a Range request


def test_truncated_bodies_are_never_complete(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=1, on=ALL)))
    got = export_all(make_source(sim))
    check_export(sim, got)  # each body was cut once: detected, then fetched (or resumed) again
    assert sim.stats.statuses["media:206"] > 0


def test_always_truncated_media_raises_and_never_reads_complete(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=-1, on=("media",))))
    source = make_source(sim, artifacts=["media"], retries=2)
    recs = list(visible_media(sim, source))[:4]
    assert recs
    for rec in recs:
        (media,) = source.artifacts(rec)
        opened = media.open()
        received = 0
        with pytest.raises(SourceError) as e:
            for piece in opened.chunks:
                received += len(piece)
        assert received < sim.tenant.media_size(rec.id)
        assert "broke off" in str(e.value) and e.value.retryable


def test_without_resume_a_truncated_media_raises(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=1, on=("media",))))
    source = make_source(sim, artifacts=["media"], resume_downloads=False)
    rec = next(visible_media(sim, source))
    (media,) = source.artifacts(rec)
    with pytest.raises(SourceError):
        read(media)
    data, _ = read(media)  # a retry by the core opens it again
    assert len(data) == sim.tenant.media_size(rec.id)


def test_httpx_raises_on_a_body_shorter_than_its_content_length(sim: ChorusSimulator) -> None:
    """What the source relies on: a short body is an error, not a short success."""
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=-1, on=("media_api",))))
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_path)))
    call = next(c for c in sim.tenant.exportable() if not c.hidden and c.media_size > 1000)
    link = sim.link(call)
    with pytest.raises(httpx.RemoteProtocolError):
        # the API answers /media?info=true with JSON, cut half-way
        client.get(
            f"{sim.base_url}/api/v1/conversations/{call.engagement_id}/media?info=true", headers={"Authorization": sim.token}
        )
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=-1, on=("media",))))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(link)
    client.close()


def test_slow_answers_time_out_and_are_retried(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(slow=Fault(ratio=0.1, times=1, on=ALL), slow_seconds=0.6))
    sleeps = Sleeps()
    got = export_all(make_source(sim, sleeps, read_timeout=0.2))
    check_export(sim, got)
    assert len(sleeps.delays) >= 5  # each timed-out request was sent again after a backoff


# --- media links ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [403, 410])
def test_expired_links_are_asked_for_again(sim: ChorusSimulator, status: int) -> None:
    sim.configure(faults=Faults(expired_link=Fault(ratio=1.0, times=1, on=("media_api",)), expired_status=status))
    got = export_all(make_source(sim, artifacts=["media"]))
    check_export(sim, got, artifacts=("media",))
    assert sim.stats.statuses[f"media:{status}"] == len(got.files)
    assert sim.stats.links_issued == 2 * len(got.files)


def test_links_that_always_expire_fail_after_the_refresh_limit(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(expired_link=Fault(ratio=1.0, times=-1, on=("media_api",))))
    source = make_source(sim, artifacts=["media"], link_refreshes=2)
    rec = next(visible_media(sim, source))
    (media,) = source.artifacts(rec)
    with pytest.raises(SourceError) as e:
        media.open()
    assert "refused 3 download links" in str(e.value)
    assert sim.stats.links_issued == 3


def test_an_expired_link_during_a_resume_is_renewed(sim: ChorusSimulator) -> None:
    sim.configure(faults=Faults(reset=Fault(ratio=1.0, times=1, on=("media",))))
    source = make_source(sim, artifacts=["media"])
    call = next(c for c in sim.tenant.exportable() if not c.hidden and c.media_size > 1_000_000)
    rec = next(r for r in source.recordings(WINDOW) if r.id == call.engagement_id)
    (media,) = source.artifacts(rec)
    opened = media.open()
    # the first link expires while the download runs: the resume must get a new one
    sim.configure(
        faults=Faults(expired_link=Fault(ratio=1.0, times=1, on=("media_api",)), reset=Fault(ratio=1.0, times=1, on=("media",)))
    )
    import hashlib

    h = hashlib.sha256()
    for piece in opened.chunks:
        h.update(piece)
    assert h.hexdigest() == sim.tenant.media_sha256(call.engagement_id)


# --- 401, 403, 404 -----------------------------------------------------------------------------
def test_a_wrong_token_stops_at_once(sim: ChorusSimulator) -> None:
    source = ChorusSource(options(sim, token=Secret("not-the-token", "token"), retries=5))
    with pytest.raises(AuthError) as e:
        list(source.recordings(WINDOW))
    assert "the Chorus token was rejected" in str(e.value) and e.value.status == 401
    assert not e.value.retryable
    assert sim.stats.total("api") == 1  # no retry storm


def test_a_wrong_token_stops_check(sim: ChorusSimulator) -> None:
    with pytest.raises(AuthError):
        ChorusSource(options(sim, token=Secret("not-the-token", "token"))).check()
    make_source(sim).check()
    assert sim.stats.requests["api:list"] == 2


def test_bearer_scheme(sim: ChorusSimulator) -> None:
    make_source(sim, auth_scheme="bearer").check()
    assert sim.stats.authorization["api"][-1] == "Bearer " + sim.token
    sim.accept_auth = ("raw",)
    try:
        with pytest.raises(AuthError):
            make_source(sim, auth_scheme="bearer").check()
    finally:
        sim.accept_auth = ("raw", "bearer")


def test_hidden_calls_are_skipped_with_their_reason(sim: ChorusSimulator) -> None:
    got = export_all(make_source(sim))
    check_export(sim, got)
    hidden = {c.engagement_id: c.hidden for c in sim.tenant.exportable() if c.hidden}
    assert sorted(set(hidden.values())) == ["forbidden", "not_found"]
    assert {cid: got.skipped[cid] for cid in hidden} == hidden


def test_a_call_hidden_from_the_token_is_skipped_before_its_media_is_asked(sim: ChorusSimulator) -> None:
    """Only media asked for: the conversation is asked first (its fields minimal), so that a 404
    skips the call as not visible, while a media 404 alone only reports the media missing."""
    source = make_source(sim, artifacts=["media"])
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and sim.tenant.by_id[r.id].hidden == "not_found")
    with pytest.raises(SkipRecording) as e:
        source.artifacts(rec)
    assert e.value.reason == "not_found"
    assert "HTTP 404" in str(e.value) and "Not found" in str(e.value)
    assert sim.stats.requests["api:media_api"] == 0


def test_strict_turns_a_skip_into_an_error(sim: ChorusSimulator) -> None:
    source = make_source(sim, strict=True)
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and sim.tenant.by_id[r.id].hidden == "forbidden")
    with pytest.raises(SourceError) as e:
        source.artifacts(rec)
    assert e.value.status == 403 and not e.value.retryable
    assert "API may not be called using this token" in str(e.value)


def test_media_read_into_buffers_resumes_after_a_reset_and_fails_loudly_when_always_cut(sim: ChorusSimulator) -> None:
    """The path the core takes for a large download (``Opened.readinto``): same Range resumes,
    same loud failure as the chunks."""
    import hashlib

    sim.configure(faults=Faults(reset=Fault(ratio=1.0, times=1, on=("media",))))
    source = make_source(sim, artifacts=["media"])
    call = next(c for c in sim.tenant.exportable() if not c.hidden and c.media_size > 1_000_000)
    rec = next(r for r in source.recordings(WINDOW) if r.id == call.engagement_id)
    (media,) = source.artifacts(rec)
    opened = media.open()
    assert opened.readinto is not None
    buf = memoryview(bytearray(100_000))
    h = hashlib.sha256()
    total = 0
    while n := opened.readinto(buf):
        h.update(buf[:n])
        total += n
    assert total == call.media_size == opened.size
    assert h.hexdigest() == sim.tenant.media_sha256(call.engagement_id)
    assert sim.stats.statuses["media:206"] > 0  # continued with a Range request
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=-1, on=("media",))))
    opened = make_source(sim, artifacts=["media"], retries=2).artifacts(rec)[0].open()
    assert opened.readinto is not None
    total = 0
    with pytest.raises(SourceError) as e:
        while n := opened.readinto(buf):
            total += n
    assert total < call.media_size
    assert "broke off" in str(e.value) and e.value.retryable
