"""``GET /v3/engagements`` as the real API answers it: newest first, ``continuation_key`` pages
that must come with the same filters, duplicates across pages, the end markers seen in the wild;
optionally ignoring ``min_date``/``max_date`` (:attr:`~.config.Behaviour.ignore_date_filters`)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from .config import END_MARKERS, Behaviour, Paging, Stats
from .https_server import Handler, parse_date
from .tenant import Call, Tenant, _unit


class EngagementRoutes:
    """Mixed into :class:`~.server.ChorusSimulator`."""

    stats: Stats
    paging: Paging
    behaviour: Behaviour
    tenant: Tenant
    _issued_keys: dict[str, set[str]]  #: a key, and the filters of every query it was issued to

    def _send_json(self, h: Handler, status: int, doc: Any, **kw: Any) -> None:
        raise NotImplementedError

    def _engagements(self, h: Handler, q: dict[str, str], resource: str) -> None:
        if self.behaviour.listing_forbidden:
            self._send_json(h, 403, {"errors": [{"detail": "API may not be called using this token."}]})
            return
        lo = hi = None
        if "min_date" in q:
            lo = parse_date(q["min_date"])
            if lo is None:
                self._send_json(h, 400, {"message": "min_date must be an ISO-8601 date-time"})
                return
        if "max_date" in q:
            hi = parse_date(q["max_date"])
            if hi is None:
                self._send_json(h, 400, {"message": "max_date must be an ISO-8601 date-time"})
                return
        types = {t for t in q.get("engagement_type", "").split(",") if t}
        ids = {t for t in q.get("engagement_id", "").split(",") if t}
        filters = json.dumps([q.get("min_date"), q.get("max_date"), sorted(types), sorted(ids)])
        if self.behaviour.ignore_date_filters:
            lo = hi = None
        items = [
            c
            for c in self.tenant.calls
            if c.listed
            and (lo is None or c.started_at >= lo)
            and (hi is None or c.started_at <= hi)  # inclusive: the worst case for a client
            and (not types or c.engagement_type in types)
            and (not ids or c.engagement_id in ids)
        ]
        key = q.get("continuation_key")
        paging = self.paging
        marker = paging.end_marker
        if marker == "mixed":
            marker = END_MARKERS[int(_unit("marker", filters) * len(END_MARKERS))]
        if key:
            issued = self._issued_keys.get(key)
            if issued is None:
                self._send_json(h, 400, {"message": "unknown continuation_key"})
                return
            if filters not in issued:  # the same key text may end a page of two queries: valid for both
                self._send_json(h, 400, {"message": "continuation_key was issued for other filters; resend the same filters"})
                return
            pos = self._position(items, key)
        else:
            pos = 0
        sizes = paging.page_sizes or (10,)
        size = max(1, sizes[int(_unit("page", key or "", filters) * len(sizes))])
        if pos >= len(items):
            page: list[Call] = []
            end = True
        else:
            start = max(0, pos - min(paging.duplicates, size - 1)) if key else 0
            page = items[start : start + size]
            end = start + size >= len(items)
        trackers = not self.behaviour.trackers_only_on_request or q.get("with_trackers", "").lower() == "true"
        doc: dict[str, Any] = {"engagements": [self.tenant.engagement(c, trackers=trackers) for c in page]}
        if not end or (marker == "empty_page" and page):
            last = page[-1]
            next_key = f"{last.date_time}.0 {last.engagement_id}"
            self._issued_keys.setdefault(next_key, set()).add(filters)
            doc["continuation_key"] = next_key
        elif marker == "empty_page":
            doc["continuation_key"] = f"{int(time.time())}.0 END{secrets.token_hex(4).upper()}"
        elif marker == "space":
            doc["continuation_key"] = " "
        elif marker == "empty":
            doc["continuation_key"] = ""
        elif marker == "null":
            doc["continuation_key"] = None
        elif marker == "repeat":
            doc["continuation_key"] = key or " "
        # "missing": no key at all
        self._send_json(h, 200, doc, target="list", resource=resource)

    @staticmethod
    def _position(items: list[Call], key: str) -> int:
        """Index of the first item after the one the key names (items are newest first)."""
        stamp, _, eid = key.partition(" ")
        try:
            mark = (int(float(stamp)), eid)
        except ValueError:
            return len(items)
        lo, hi = 0, len(items)
        while lo < hi:  # first index whose (date_time, id) is below the mark
            mid = (lo + hi) // 2
            if (items[mid].date_time, items[mid].engagement_id) >= mark:
                lo = mid + 1
            else:
                hi = mid
        return lo
