"""Listing calls with ``GET /v3/engagements``: bounded windows, continuation keys, filters.

The API lists newest first and cannot jump to a date, so the export window is walked in slices
of ``window_days``, newest slice first. Each slice is asked with ``min_date``/``max_date``
widened by one second on both sides (whether the API treats them as inclusive is not
documented) and every item is then kept only if its ``date_time`` lies in ``[start, end)`` of
its slice: a call on a boundary belongs to exactly one slice. Pages follow ``continuation_key``
with the same filters resent on every page, and stop on a missing, empty or blank key (the API
sends a single space), an empty page, or a key seen before (a loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

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


def pages(get_page: Callable[[dict[str, str]], dict[str, Any]], filters: dict[str, str]) -> Iterator[list[Any]]:
    """The pages of one query, following ``continuation_key`` until one of the end conditions."""
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


def wanted(item: dict[str, Any], include_unprocessed: bool, include_no_show: bool) -> bool:
    """Only recorded calls: processing done, not a no-show, with a duration (by default)."""
    if not include_unprocessed and item.get("processing_state") != "done":
        return False
    if not include_no_show and item.get("no_show") is True:
        return False
    duration = item.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return False
    return duration > 0
