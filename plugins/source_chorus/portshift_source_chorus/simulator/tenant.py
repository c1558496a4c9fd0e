"""A deterministic synthetic Chorus tenant: calls, conversation documents and media bytes.

Everything is derived from a seed, so two simulators with the same arguments serve the same
bytes, and a test can know in advance what an export must contain. Media bytes are generated on
the fly from any offset in constant memory: a 2 GiB recording costs no memory, and its SHA-256
(:meth:`Tenant.media_sha256`) is computed by streaming the same generator.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .calls import Call, _rng, _unit
from .documents import Documents

__all__ = ["BLOCK", "Call", "Tenant", "TenantSpec", "_unit", "media_chunks"]

BLOCK = 64 * 1024

DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
DEFAULT_END = datetime(2024, 4, 1, tzinfo=timezone.utc)


@dataclass
class TenantSpec:
    """What to generate. Ratios are shares of all calls, chosen deterministically from the seed."""

    calls: int = 40
    seed: int = 0
    start: datetime = DEFAULT_START
    end: datetime = DEFAULT_END
    media_size: int | tuple[int, int] = 64 * 1024  #: bytes, or an inclusive (min, max) range
    media_sizes: dict[int, int] = field(default_factory=dict)  #: call index -> size override
    unprocessed_ratio: float = 0.05
    no_show_ratio: float = 0.05
    zero_duration_ratio: float = 0.03
    private_ratio: float = 0.05
    other_type_ratio: float = 0.05  #: e-mails: listed only when asked for, never exported
    not_found_ratio: float = 0.0  #: listed, but 404 on /conversations/{id} and /media
    forbidden_ratio: float = 0.0  #: listed, but 403 on /conversations/{id} and /media
    same_second_ratio: float = 0.1  #: share of calls sharing their start second with another
    #: no-shows keep their recording (the provider's own example: 48 minutes, done, no_show);
    #: False: every no-show recorded nothing (duration 0)
    recorded_no_show: bool = True
    media_missing_ratio: float = 0.0  #: conversation there, media 404 (removed, expired, not recorded)
    summary_ratio: float = 0.0  #: calls whose conversation carries a summary and action items
    scorecard_ratio: float = 0.0  #: calls a scorecard names


class Tenant(Documents):
    """The calls of one synthetic tenant, newest first."""

    def __init__(self, spec: TenantSpec | None = None, **kwargs: object) -> None:
        self.spec = spec or TenantSpec(**kwargs)  # type: ignore[arg-type]
        s = self.spec
        if s.end <= s.start:
            raise ValueError("the tenant's end must be after its start")
        calls: list[Call] = []
        previous_second: int | None = None
        for i in range(s.calls):
            calls.append(self._call(i, previous_second))
            previous_second = calls[-1].date_time
        calls.sort(key=lambda c: (c.date_time, c.engagement_id), reverse=True)
        self.calls: list[Call] = calls
        self.by_id: dict[str, Call] = {c.engagement_id: c for c in calls}
        self._sha_cache: dict[str, str] = {}
        self._lock = threading.Lock()
        #: calls whose summary a read generated (the API's default without skip_summary_generation)
        self.generated: set[str] = set()

    def _call(self, i: int, previous_second: int | None) -> Call:
        """Call number ``i``, derived from the seed (the same whatever the number of calls)."""
        s = self.spec
        span = int((s.end - s.start).total_seconds())
        start = int(s.start.timestamp())
        r = _rng(s.seed, "call", i)
        eid = hashlib.sha256(f"{s.seed}:engagement:{i}".encode()).hexdigest()[:32].upper()
        if previous_second is not None and r.random() < s.same_second_ratio:
            second = previous_second
        else:
            second = start + r.randrange(span)
        kind = "email" if r.random() < s.other_type_ratio else ("meeting" if r.random() < 0.6 else "dialer")
        duration = round(r.uniform(30, 3600), 2)
        state = "done"
        if r.random() < s.unprocessed_ratio:
            state = r.choice(["processing", "live", "scheduled"])
        no_show = r.random() < s.no_show_ratio
        if r.random() < s.zero_duration_ratio or kind == "email":
            duration = 0.0
        private = r.random() < s.private_ratio
        hidden = None
        u = _unit(s.seed, "hidden", i)
        if u < s.not_found_ratio:
            hidden = "not_found"
        elif u < s.not_found_ratio + s.forbidden_ratio:
            hidden = "forbidden"
        if i in s.media_sizes:
            size = s.media_sizes[i]
        elif isinstance(s.media_size, tuple):
            size = r.randint(s.media_size[0], s.media_size[1])
        else:
            size = int(s.media_size)
        audio_only = kind == "dialer" or r.random() < 0.2
        if kind == "dialer":
            ctype = r.choice(["audio/mpeg", "audio/mp4", "audio/wav"])
        elif audio_only:
            ctype = "audio/mpeg"
        else:
            ctype = "video/mp4"
        if no_show and not s.recorded_no_show:
            duration = 0.0
        missing = _unit(s.seed, "media-missing", i) < s.media_missing_ratio
        summary = _unit(s.seed, "summary", i) < s.summary_ratio
        return Call(i, eid, kind, second, duration, state, no_show, private, hidden, size, ctype, audio_only, missing, summary)

    # --- changes over time -------------------------------------------------------------------
    def add_call(self, **changes: object) -> str:
        """A new call appears (recorded after an export, or made visible): the next one the seed
        gives, with ``changes`` (e.g. ``date_time``, ``private=False``). Returns its id."""
        call = replace(self._call(len(self.by_id), None), **changes)  # type: ignore[arg-type]
        self.calls.append(call)
        self.calls.sort(key=lambda c: (c.date_time, c.engagement_id), reverse=True)
        self.by_id[call.engagement_id] = call
        return call.engagement_id

    def finish_processing(self, call_ids: list[str] | None = None) -> list[str]:
        """Calls that were live, scheduled or processing are done now (all, or ``call_ids``), as
        Chorus finishes them between two runs. Returns the ids that changed."""
        changed = []
        for n, c in enumerate(self.calls):
            if c.processing_state != "done" and (call_ids is None or c.engagement_id in call_ids):
                done = replace(c, processing_state="done")
                self.calls[n] = done
                self.by_id[c.engagement_id] = done
                changed.append(c.engagement_id)
        return changed

    def generate_summary(self, call_id: str) -> None:
        with self._lock:
            self.generated.add(call_id)

    # --- what tests ask ----------------------------------------------------------------------
    def exportable(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        types: tuple[str, ...] = ("meeting", "dialer"),
        include_unprocessed: bool = False,
        include_no_show: bool = False,
    ) -> list[Call]:
        """The calls the Chorus source must export in full for the window ``[start, end)``."""
        out = []
        for c in self.calls:
            if start is not None and c.started_at < start:
                continue
            if end is not None and c.started_at >= end:
                continue
            if c.engagement_type in types and c.exportable(include_unprocessed, include_no_show):
                out.append(c)
        return out

    def media_chunks(self, call_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The media bytes ``[start, end)`` of a call, in pieces of at most 64 KiB."""
        call = self.by_id[call_id]
        return media_chunks(self.spec.seed, call_id, call.media_size, start, end)

    def media_sha256(self, call_id: str) -> str:
        """SHA-256 of a call's media, computed by streaming (cached)."""
        with self._lock:
            if call_id in self._sha_cache:
                return self._sha_cache[call_id]
        h = hashlib.sha256()
        for piece in self.media_chunks(call_id):
            h.update(piece)
        digest = h.hexdigest()
        with self._lock:
            self._sha_cache[call_id] = digest
        return digest

    def media_size(self, call_id: str) -> int:
        return self.by_id[call_id].media_size

    def listed(
        self, start: datetime | None = None, end: datetime | None = None, types: tuple[str, ...] = ("meeting", "dialer")
    ) -> list[Call]:
        """Every call ``/v3/engagements`` lists in ``[start, end)`` for ``types``."""
        return [
            c
            for c in self.calls
            if c.listed
            and c.engagement_type in types
            and (start is None or c.started_at >= start)
            and (end is None or c.started_at < end)
        ]

    def outcomes(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        types: tuple[str, ...] = ("meeting", "dialer"),
        include_unprocessed: bool = False,
        include_no_show: bool = False,
    ) -> dict[str, str]:
        """Call id -> :meth:`Call.outcome` for every call listed in the window."""
        return {c.engagement_id: c.outcome(include_unprocessed, include_no_show) for c in self.listed(start, end, types)}


def _base_block(seed: int, call_id: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(f"{seed}:{call_id}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def media_chunks(seed: int, call_id: str, size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of a ``size``-byte synthetic media file, at most 64 KiB per piece.

    Block ``n`` (64 KiB) is the call's base block with its first 8 bytes replaced by ``n``, so any
    reordering, duplication or loss of a block changes the SHA-256.
    """
    end = size if end is None else min(end, size)
    if start >= end:
        return
    base = _base_block(seed, call_id)
    pos = start
    while pos < end:
        n, off = divmod(pos, BLOCK)
        block = n.to_bytes(8, "big") + base[8:]
        piece = block[off : off + (end - pos)]
        yield piece
        pos += len(piece)
