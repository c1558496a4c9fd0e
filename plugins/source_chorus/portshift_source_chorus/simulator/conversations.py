"""``GET /api/v1/conversations/{id}``, ``GET /api/v1/emails/{id}`` and ``GET /api/v1/scorecards``:
JSON:API documents, 403/404 for calls the token's user may not see, and the one side effect a
read can have on a real tenant (an AI summary generated unless ``skip_summary_generation=true``)."""

from __future__ import annotations

import json
from typing import Any

from .config import NOT_FOUND, Behaviour, Stats
from .https_server import Handler, error
from .tenant import Call, Tenant


class ConversationRoutes:
    """Mixed into :class:`~.server.ChorusSimulator`."""

    stats: Stats
    behaviour: Behaviour
    tenant: Tenant

    def _send_json(self, h: Handler, status: int, doc: Any, **kw: Any) -> None:
        raise NotImplementedError

    def _visible(self, h: Handler, cid: str, what: str) -> Call | None:
        call = self.tenant.by_id.get(cid)
        if call is None or call.private or call.hidden == "not_found":
            self._send_json(h, 404, error(404, "Not found", NOT_FOUND), jsonapi=True)
            return None
        if call.hidden == "forbidden":
            self._send_json(h, 403, error(403, "Forbidden", "API may not be called using this token."), jsonapi=True)
            return None
        if what == "media" and not call.has_media:
            self._send_json(h, 404, error(404, "Not found", "This conversation has no media."), jsonapi=True)
            return None
        return call

    def _conversation(self, h: Handler, cid: str, q: dict[str, str], resource: str) -> None:
        if "application/vnd.api+json" not in h.headers.get("Accept", ""):
            self._send_json(h, 406, error(406, "Not Acceptable", "Accept must be application/vnd.api+json"), jsonapi=True)
            return
        call = self._visible(h, cid, "conversation")
        if call is None:
            return
        with self.stats.lock:
            self.stats.conversation_queries.append(dict(q))
        if q.get("skip_summary_generation", "").lower() != "true":
            # the API's default: reading a conversation makes Chorus generate its AI summary
            with self.stats.lock:
                self.stats.writes.append(("GET", h.path.split("?", 1)[0], "summary generation"))
            if self.behaviour.summary_on_read and call.processing_state == "done":
                self.tenant.generate_summary(cid)
        fields = {f.strip() for f in q["fields"].split(",")} if "fields" in q else None
        body = self.tenant.conversation_bytes(cid, fields)
        self._send_json(h, 200, None, body=body, jsonapi=True, target="conversation", resource=resource)

    def _email(self, h: Handler, cid: str) -> None:
        call = self.tenant.by_id.get(cid)
        if call is None or call.engagement_type != "email" or call.private or call.hidden == "not_found":
            self._send_json(h, 404, error(404, "Not found", NOT_FOUND), jsonapi=True)
            return
        self._send_json(h, 200, None, body=self.tenant.email_bytes(cid), jsonapi=True)

    def _scorecards(self, h: Handler, q: dict[str, str]) -> None:
        if self.behaviour.scorecards_forbidden:
            self._send_json(h, 403, error(403, "Forbidden", "You are not allowed to view scorecards."), jsonapi=True)
            return
        try:
            number = max(1, int(q.get("page[number]", "1")))
            size = max(1, min(100, int(q.get("page[size]", "20"))))
        except ValueError:
            self._send_json(h, 400, error(400, "Bad Request", "page[number] and page[size] must be integers"), jsonapi=True)
            return
        cards = self.tenant.scorecards()
        page = cards[(number - 1) * size : number * size]
        doc: dict[str, Any] = {"data": page, "meta": {"total": len(cards)}}
        if number * size < len(cards):
            doc["links"] = {"next": f"/api/v1/scorecards?page[number]={number + 1}&page[size]={size}"}
        self._send_json(h, 200, None, body=json.dumps(doc).encode(), jsonapi=True)
