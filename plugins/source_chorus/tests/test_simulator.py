"""The simulator's own promises: a deterministic tenant, media from any offset in constant memory,
Range answers a resuming client can rely on."""

from __future__ import annotations

import hashlib
import ssl
import tracemalloc

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from portshift_source_chorus.simulator import ChorusSimulator, Tenant, TenantSpec, media_chunks

GiB = 1024**3


def test_the_tenant_is_deterministic() -> None:
    a, b = Tenant(TenantSpec(calls=30, seed=4)), Tenant(TenantSpec(calls=30, seed=4))
    assert [c.engagement_id for c in a.calls] == [c.engagement_id for c in b.calls]
    cid = a.exportable()[0].engagement_id
    assert a.conversation_bytes(cid, {"recording.utterances"}) == b.conversation_bytes(cid, {"recording.utterances"})
    assert a.media_sha256(cid) == b.media_sha256(cid)
    other = Tenant(TenantSpec(calls=30, seed=5))
    assert {c.engagement_id for c in other.calls}.isdisjoint(c.engagement_id for c in a.calls)


def test_calls_are_newest_first_and_varied() -> None:
    t = Tenant(TenantSpec(calls=200, seed=1))
    keys = [(c.date_time, c.engagement_id) for c in t.calls]
    assert keys == sorted(keys, reverse=True)
    assert {c.engagement_type for c in t.calls} == {"meeting", "dialer", "email"}
    assert any(c.private for c in t.calls) and any(c.no_show for c in t.calls)
    assert any(c.processing_state != "done" for c in t.calls) and any(c.duration == 0 for c in t.calls)
    assert len({c.date_time for c in t.calls}) < len(t.calls)  # some calls share their start second


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300_000), a=st.integers(0, 300_000), b=st.integers(0, 300_000))
def test_any_range_is_the_slice_of_the_whole(size: int, a: int, b: int) -> None:
    whole = b"".join(media_chunks(3, "X", size))
    assert len(whole) == size
    start, end = min(a, b), max(a, b)
    part = b"".join(media_chunks(3, "X", size, start, end))
    assert part == whole[start:end]
    assert all(len(p) <= 64 * 1024 for p in media_chunks(3, "X", size, start, end))


def test_a_2_gib_recording_costs_no_memory() -> None:
    tracemalloc.start()
    try:
        h = hashlib.sha256()
        n = 0
        for piece in media_chunks(0, "BIG", 2 * GiB, 0, 256 * 1024**2):
            h.update(piece)
            n += len(piece)
        tail = b"".join(media_chunks(0, "BIG", 2 * GiB, 2 * GiB - 100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 256 * 1024**2 and len(tail) == 100
    assert peak < 1024 * 1024, f"peak {peak} bytes"
    # every 64 KiB block starts with its index, so blocks cannot be swapped or repeated unseen
    blocks = (2 * GiB) // (64 * 1024)
    last = b"".join(media_chunks(0, "BIG", 2 * GiB, 2 * GiB - 64 * 1024, 2 * GiB - 64 * 1024 + 8))
    assert last == (blocks - 1).to_bytes(8, "big")
    first = b"".join(media_chunks(0, "BIG", 2 * GiB, 0, 64 * 1024))
    assert tail == first[-100:]  # same base block, far from the index prefix
    t = Tenant(TenantSpec(calls=1, seed=0, private_ratio=0, media_sizes={0: 2 * GiB}))
    assert t.media_size(t.calls[0].engagement_id) == 2 * GiB


def test_range_requests(sim: ChorusSimulator) -> None:
    call = next(c for c in sim.tenant.exportable() if not c.hidden and c.media_size > 100_000)
    whole = b"".join(sim.tenant.media_chunks(call.engagement_id))
    with httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_path))) as c:
        r = c.get(sim.link(call), headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == whole[1000:]
        assert r.headers["content-range"] == f"bytes 1000-{call.media_size - 1}/{call.media_size}"
        etag = r.headers["etag"]
        r = c.get(sim.link(call), headers={"Range": "bytes=10-19", "If-Range": etag})
        assert r.status_code == 206 and r.content == whole[10:20]
        r = c.get(sim.link(call), headers={"Range": "bytes=10-19", "If-Range": '"other"'})
        assert r.status_code == 200 and r.content == whole
        r = c.get(sim.link(call), headers={"Range": f"bytes={call.media_size}-"})
        assert r.status_code == 416
        r = c.get(sim.link(call).replace("sig=", "sig=0"))
        assert r.status_code == 403 and b"AccessDenied" in r.content
        r = c.get(sim.link(call, expired=True))
        assert r.status_code == 403 and b"expired" in r.content


def test_a_continuation_key_serves_every_query_it_was_issued_to(sim: ChorusSimulator) -> None:
    """Two queries whose pages end at the same call get the same key text: it is valid for both
    (two workers list at once); a key resent with filters it was never issued for is refused."""
    from datetime import datetime, timezone

    from portshift_source_chorus.simulator import Paging

    from .conftest import CANARY

    sim.configure(paging=Paging(page_sizes=(3,)))
    url, auth = f"{sim.base_url}/v3/engagements", {"Authorization": CANARY}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_path))) as c:
        whole = {"engagement_type": "meeting"}
        first = c.get(url, params=whole, headers=auth).json()
        newest = datetime.fromtimestamp(first["engagements"][0]["date_time"] + 1, tz=timezone.utc)
        bounded = {**whole, "max_date": newest.strftime("%Y-%m-%dT%H:%M:%SZ")}
        other = c.get(url, params=bounded, headers=auth).json()
        key = first["continuation_key"]
        assert other["continuation_key"] == key  # the same page, another query
        for params in (whole, bounded):
            assert c.get(url, params={**params, "continuation_key": key}, headers=auth).status_code == 200
        never = {**whole, "engagement_type": "dialer"}
        r = c.get(url, params={**never, "continuation_key": key}, headers=auth)
        assert r.status_code == 400 and b"other filters" in r.content
