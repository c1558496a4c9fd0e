"""Listing calls with ``GET /v3/engagements``: bounded windows, continuation keys, filters.

The API lists newest first and cannot jump to a date, so the export window is walked in slices
of ``window_days``, newest slice first. Each slice is asked with ``min_date``/``max_date``
widened by one second on both sides (whether the API treats them as inclusive is not
documented) and every item is then kept only if its ``date_time`` lies in ``[start, end)`` of
its slice: a call on a boundary belongs to exactly one slice. Pages follow ``continuation_key``
with the same filters resent on every page, and stop on a missing, empty or blank key (the API
sends a single space), an empty page, a key seen before (a loop), or a whole page older than the
slice's start: a tenant that ignored ``min_date``/``max_date`` (no public source confirms they are
honoured) would otherwise be walked to its first call once per slice.

Every call of the window the API lists is yielded once, with what will happen to it decided
here (:func:`plan`): exported, pending (not processed yet: a later run exports it) or skipped
with a reason. Nothing is dropped without a word.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from portshift import RecordingPending, SkipRecording

log = logging.getLogger("portshift.chorus")


def slices(start: datetime, end: datetime, days: float) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` cut into slices of ``days``, newest first."""
    step = timedelta(days=days)
    hi = end
    while hi > start:
        lo = max(start, hi - step)
        yield lo, hi
        hi = lo


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def query_for(lo: datetime, hi: datetime, engagement_type: str) -> dict[str, str]:
    """The filters of one slice (sent unchanged with every page)."""
    return {
        "min_date": iso(math.floor(lo.timestamp()) - 1),
        "max_date": iso(math.ceil(hi.timestamp()) + 1),
        "engagement_type": engagement_type,
    }


def pages(
    get_page: Callable[[dict[str, str]], dict[str, Any]], filters: dict[str, str], older_than: datetime | None = None
) -> Iterator[list[Any]]:
    """The pages of one query, following ``continuation_key`` until one of the end conditions;
    with ``older_than``, also after a page whose every dated item started before it."""
    key: str | None = None
    seen: set[str] = set()
    while True:
        params = dict(filters)
        if key is not None:
            params["continuation_key"] = key
        doc = get_page(params)
        items = doc.get("engagements") or []
        if not items:
            return
        yield items
        if older_than is not None and _all_older(items, older_than):
            log.debug("a whole page is older than the slice: end of the slice")
            return
        nxt = doc.get("continuation_key")
        if not isinstance(nxt, str) or not nxt.strip():
            return
        if nxt in seen:
            log.debug("continuation_key repeated: end of the listing")
            return
        seen.add(nxt)
        key = nxt


def started_at(item: dict[str, Any]) -> datetime | None:
    value = item.get("date_time")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _all_older(items: list[Any], limit: datetime) -> bool:
    dates = [started_at(i) for i in items if isinstance(i, dict)]
    known = [d for d in dates if d is not None]
    return bool(known) and all(d < limit for d in known)


#: processing states of a call that is not ready yet: pending, exported by a later run
PENDING_STATES = frozenset({"live", "scheduled", "processing"})
#: engagement types that may carry a recording
RECORDED_TYPES = frozenset({"meeting", "dialer"})

FULL = "full"  #: a recorded call: every artifact asked for
METADATA = "metadata"  #: nothing recorded (an e-mail, a no-show kept by include_no_show): metadata-type files only


def plan(item: dict[str, Any], kind: str, include_unprocessed: bool, include_no_show: bool) -> str | SkipRecording:
    """What to do with one listed call: :data:`FULL`, :data:`METADATA`, or the pending/skip
    outcome (a :class:`portshift.RecordingPending` or :class:`portshift.SkipRecording`)."""
    if kind not in RECORDED_TYPES:
        return METADATA  # e-mail, content_viewed, unrecorded_meeting: no recording by nature
    state = item.get("processing_state")
    if state != "done" and not include_unprocessed:
        if state in PENDING_STATES:
            return RecordingPending(str(state), f"the call is {state}: not ready yet, a later run exports it")
        return SkipRecording("not_processed", f"the call's processing_state is {str(state)[:40]!r}, not 'done'")
    duration = item.get("duration")
    recorded = not isinstance(duration, bool) and isinstance(duration, (int, float)) and duration > 0
    if recorded:
        return FULL  # a no-show with a recording is exported like any call
    if item.get("no_show") is True:
        if include_no_show:
            return METADATA
        return SkipRecording("no_show", "a no-show: nothing was recorded (include_no_show exports its metadata)")
    return SkipRecording("no_recording", "nothing was recorded (no duration)")
