"""Media: ``GET /api/v1/conversations/{id}/media`` (a redirect to a signed link, a JSON answer
carrying one, or the bytes), and the media host behind those links (HMAC-signed, expiring,
``Range``/``If-Range``, S3-style XML errors)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from .config import Faults, MediaConfig, Stats
from .https_server import Handler
from .tenant import Call, Tenant


class MediaRoutes:
    """Mixed into :class:`~.server.ChorusSimulator`."""

    stats: Stats
    faults: Faults
    media: MediaConfig
    tenant: Tenant
    _link_key: bytes
    media_origin: str
    _visible: Callable[..., Call | None]
    _hits: Callable[..., bool]
    _common_faults: Callable[..., bool]
    _status: Callable[..., None]
    _send: Callable[..., None]
    _send_json: Callable[..., None]
    _send_xml: Callable[..., None]

    def _etag(self, call: Call) -> str:
        digest = hashlib.sha256(f"{self.tenant.spec.seed}:{call.engagement_id}:{call.media_size}".encode()).hexdigest()
        return f'"{digest[:32]}"'

    def _sign(self, cid: str, expires: int) -> str:
        return hmac.new(self._link_key, f"{cid}:{expires}".encode(), hashlib.sha256).hexdigest()

    def link(self, call: Call, expired: bool = False) -> str:
        """A signed link to a call's media (already expired when ``expired``)."""
        expires = int(time.time() - 60) if expired else int(time.time() + self.media.link_ttl)
        url = f"{self.media_origin}/media/{call.engagement_id}?expires={expires}&sig={self._sign(call.engagement_id, expires)}"
        if self.media.rewrite_link:
            url = self.media.rewrite_link(url)
        with self.stats.lock:
            self.stats.links_issued += 1
            self.stats.links.append(url)
        return url

    def _media_api(self, h: Handler, cid: str, q: dict[str, str], resource: str) -> None:
        call = self._visible(h, cid, "media")
        if call is None:
            return
        info = q.get("info", "").lower() == "true"
        mode = "json" if info else self.media.mode
        if mode == "direct":
            self._serve_media(h, call, "media_api", resource, server="api")
            return
        expired = self._hits("expired_link", self.faults.expired_link, "media_api", "link:" + cid)
        url = self.link(call, expired=expired)
        if mode == "redirect":
            self._status("api", self.media.redirect_status)
            h.send_response(self.media.redirect_status)
            h.send_header("Location", url)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        expires_at = datetime.fromtimestamp(time.time() + self.media.link_ttl, tz=timezone.utc).isoformat()
        if self.media.json_shape == "jsonapi":
            doc: dict[str, Any] = {
                "data": {
                    "id": cid,
                    "type": "media",
                    "attributes": {
                        "download_url": url,
                        "content_type": call.content_type,
                        "size": call.media_size,
                        "expires_at": expires_at,
                    },
                }
            }
        else:
            doc = {"url": url, "content_type": call.content_type, "size": call.media_size, "expires_at": expires_at}
        self._send_json(h, 200, doc, target="media_api", resource=resource)

    def _media_download(self, h: Handler, path: str, q: dict[str, str]) -> None:
        cid = path[len("/media/") :] if path.startswith("/media/") else ""
        call = self.tenant.by_id.get(cid)
        try:
            expires = int(q.get("expires", ""))
        except ValueError:
            expires = -1
        sig = q.get("sig", "")
        if call is None or not hmac.compare_digest(sig, self._sign(cid, expires)):
            self._send_xml(h, 403, "AccessDenied", "Invalid signature")
            return
        if time.time() > expires:
            if self.faults.expired_status == 410:
                self._send_xml(h, 410, "Gone", "Request has expired")
            else:
                self._send_xml(h, 403, "AccessDenied", "Request has expired")
            return
        resource = "media:" + cid
        if not self._common_faults(h, "media", "media", resource):
            return
        self._serve_media(h, call, "media", resource, server="media")

    def _serve_media(self, h: Handler, call: Call, target: str, resource: str, server: str) -> None:
        size = call.media_size
        etag = self._etag(call)
        start, end = 0, size
        status = 200
        headers = {"Content-Type": call.content_type, "ETag": etag, "Accept-Ranges": "bytes"}
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if rng and (if_range is None or if_range == etag):
            spec = rng.strip()
            ok = spec.startswith("bytes=") and "," not in spec
            if ok:
                a, _, b = spec[len("bytes=") :].partition("-")
                try:
                    start = int(a)
                    end = int(b) + 1 if b else size
                except ValueError:
                    ok = False
            if not ok or start >= size or start >= end:
                self._send(h, 416, {"Content-Range": f"bytes */{size}"}, [], 0, None, None, server)
                return
            end = min(end, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        chunks: Iterator[bytes] = self.tenant.media_chunks(call.engagement_id, start, end)
        self._send(h, status, headers, chunks, end - start, target, resource, server)
