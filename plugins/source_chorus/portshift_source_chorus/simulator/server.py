"""The Chorus API simulator: two real HTTPS servers on loopback.

- the **API server** answers ``GET /v3/engagements``, ``GET /api/v1/conversations/{id}`` and
  ``GET /api/v1/conversations/{id}/media`` with the quirks of the real API (newest first, a
  single-space ``continuation_key`` at the end, duplicates across pages, JSON:API ``errors[]``);
- the **media server**, on a second port, serves recordings behind signed, expiring links
  (``/media/{id}?expires=...&sig=...``) with ``Range`` support, as a storage CDN would.

Every fault is switchable (see :class:`Faults`), and :class:`Stats` counts what was served and
records which ``Authorization`` headers reached which server, so tests can prove the token never
went to the media host. This is test and demo tooling: it is never trusted implicitly (its
throw-away CA must be passed to clients with ``ca_bundle``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .certs import ServerCerts, make_certs
from .tenant import Call, Tenant, TenantSpec, _unit

TARGETS = ("list", "conversation", "media_api", "media")


@dataclass
class Fault:
    """Which requests a fault hits: ``ratio`` of the resources (chosen from the seed), each on its
    first ``times`` requests (``-1``: every time), on the request kinds listed in ``on``."""

    ratio: float = 1.0
    times: int = 1
    on: tuple[str, ...] = TARGETS


@dataclass
class Faults:
    """Fault injection. Every field is off by default."""

    throttle: Fault | None = None  #: answer 429
    #: the Retry-After of injected 429s: "<n>" seconds, "date:<n>" (HTTP date n s ahead), "0",
    #: "garbage", or "none" (no header)
    retry_after: str = "1"
    server_error: Fault | None = None  #: answer 500 with a JSON:API error
    reset: Fault | None = None  #: reset the connection (TCP RST) half-way through the body
    truncate: Fault | None = None  #: close cleanly half-way through a body whose length was announced
    slow: Fault | None = None  #: wait ``slow_seconds`` before answering
    slow_seconds: float = 0.5
    expired_link: Fault | None = None  #: hand out media links that have already expired
    expired_status: int = 403  #: what the media host answers for an expired link (403 or 410)
    rate_limit: float = 0.0  #: requests per second the API server enforces (0: none)
    rate_limit_burst: float = 2.0
    rate_limit_retry_after: bool = True  #: send Retry-After with rate-limit 429s


@dataclass
class Paging:
    """How ``/v3/engagements`` splits results."""

    page_sizes: tuple[int, ...] = (10,)  #: chosen per page from the continuation key
    duplicates: int = 0  #: items of the previous page repeated at the start of the next one
    #: how the last page says so: space (" "), missing, empty (""), null, empty_page (one more,
    #: empty page), repeat (the request's own key again), mixed (any of these, per query)
    end_marker: str = "space"


@dataclass
class MediaConfig:
    """How ``/api/v1/conversations/{id}/media`` answers."""

    mode: str = "redirect"  #: redirect (3xx to a signed link), json (a link in JSON), direct (the bytes)
    redirect_status: int = 302
    json_shape: str = "flat"  #: flat ({"url": ...}) or jsonapi ({"data": {"attributes": {"download_url": ...}}})
    link_ttl: float = 300.0  #: seconds a link stays valid
    host: str = "127.0.0.1"  #: host name used in links (the certificate covers 127.0.0.1 and localhost)
    #: tests: rewrite the link handed out (e.g. to a plain-http URL, or another host)
    rewrite_link: Callable[[str], str] | None = None


NOT_FOUND = "The server has not found anything matching the Request-URI."
END_MARKERS = ("space", "missing", "empty", "null", "empty_page", "repeat")


@dataclass
class Stats:
    """What the simulator served. Thread-safe through :attr:`lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    requests: Counter[str] = field(default_factory=Counter)  #: "api:list", "media:media", ...
    statuses: Counter[str] = field(default_factory=Counter)  #: "api:429", "media:206", ...
    throttled: int = 0  #: 429s served (injected and rate limit)
    rate_limited: int = 0  #: 429s served by the enforced rate limit
    links_issued: int = 0
    media_bytes: int = 0
    #: server ("api"/"media") -> every Authorization header value received (None when absent)
    authorization: dict[str, list[str | None]] = field(default_factory=lambda: {"api": [], "media": []})
    #: server -> Host headers received
    hosts: dict[str, Counter[str]] = field(default_factory=lambda: {"api": Counter(), "media": Counter()})
    api_times: list[float] = field(default_factory=list)  #: monotonic time of every API request
    list_queries: list[dict[str, str]] = field(default_factory=list)  #: /v3/engagements query parameters
    links: list[str] = field(default_factory=list)  #: media links handed out (tests grep logs for them)
    #: every request: (server, Host header, path without query, Authorization or None)
    seen: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def total(self, server: str) -> int:
        with self.lock:
            return sum(n for k, n in self.requests.items() if k.startswith(server + ":"))

    def max_in_window(self, seconds: float = 1.0) -> int:
        """Most API requests seen in any sliding window of ``seconds``."""
        with self.lock:
            times = sorted(self.api_times)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


class _Abort(Exception):
    """Stop handling this connection (after a deliberate reset or truncation)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ChorusSimulator/1"
    sys_version = ""
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def handle(self) -> None:
        try:
            super().handle()
        except (_Abort, OSError, ssl.SSLError):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError, ssl.SSLError):
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.sim._dispatch(self, self.server.role)

    def do_POST(self) -> None:  # noqa: N802
        self.server.sim._send_json(self, 405, _error(405, "Method Not Allowed", "read-only simulator"), jsonapi=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sim: ChorusSimulator, role: str, ctx: ssl.SSLContext) -> None:
        self.sim = sim
        self.role = role
        self.ctx = ctx
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the worker thread, so a slow or failing client blocks nobody.
        request.settimeout(30)
        try:  # headers and body go out in separate writes: no Nagle delay between them
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError, _Abort):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # never print tracebacks (or request data) to stderr


def _error(status: int, title: str, detail: str, code: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"status": str(status), "title": title, "detail": detail}
    if code:
        err["code"] = code
    return {"errors": [err]}


def _parse_date(value: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


class ChorusSimulator:
    """A Chorus tenant on loopback, over HTTPS. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        tenant: Tenant | None = None,
        *,
        token: str | None = None,
        faults: Faults | None = None,
        paging: Paging | None = None,
        media: MediaConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        media_port: int = 0,
        ca_path: str | Path | None = None,
        accept_auth: tuple[str, ...] = ("raw", "bearer"),
        seed: int = 0,
        **tenant_kwargs: Any,
    ) -> None:
        self.tenant = tenant or Tenant(TenantSpec(seed=seed, **tenant_kwargs))
        self.token = token or "sim-" + secrets.token_urlsafe(18)
        self.faults = faults or Faults()
        self.paging = paging or Paging()
        self.media = media or MediaConfig()
        self.accept_auth = accept_auth
        self.host = host
        self.stats = Stats()
        self._port, self._media_port = port, media_port
        self._ca_path = Path(ca_path) if ca_path else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._link_key = secrets.token_bytes(32)
        self._fault_counts: Counter[tuple[str, str]] = Counter()
        self._fault_lock = threading.Lock()
        self._bucket = (0.0, time.monotonic())
        self._bucket_lock = threading.Lock()
        self._issued_keys: dict[str, str] = {}
        self._active = 0
        self._idle = threading.Condition()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.certs: ServerCerts | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ChorusSimulator:
        self.certs = make_certs((self.host, "localhost") if self.host != "localhost" else ("localhost", "127.0.0.1"))
        ctx = self.certs.server_context()
        self.api = _Server((self.host, self._port), self, "api", ctx)
        self.media_server = _Server((self.host, self._media_port), self, "media", ctx)
        self._servers = [self.api, self.media_server]
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._threads.append(t)
        if self._ca_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chorus-sim-ca-")
            self._ca_path = Path(self._tmp.name) / "chorus-simulator-ca.pem"
        self.certs.write_ca(self._ca_path)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ChorusSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.api.server_address[1])

    @property
    def media_port(self) -> int:
        return int(self.media_server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def media_origin(self) -> str:
        return f"https://{self.media.host}:{self.media_port}"

    @property
    def ca_path(self) -> Path:
        assert self._ca_path is not None, "start() the simulator first"
        return self._ca_path

    def reset(self) -> None:
        """Forget counters and fault history (faults then hit their resources afresh), once the
        requests still being answered are done."""
        self.wait_idle()
        with self._fault_lock:
            self._fault_counts.clear()
        self.stats = Stats()
        with self._bucket_lock:
            self._bucket = (self.faults.rate_limit_burst, time.monotonic())

    def injected(self) -> Counter[str]:
        """How many faults were injected since the last reset, per fault name ("reset", ...)."""
        out: Counter[str] = Counter()
        with self._fault_lock:
            for (name, _resource), n in self._fault_counts.items():
                fault = getattr(self.faults, name, None)
                times = fault.times if isinstance(fault, Fault) else 0
                out[name] += n if times < 0 else min(n, times)
        return out

    def configure(self, faults: Faults | None = None, paging: Paging | None = None, media: MediaConfig | None = None) -> None:
        """Replace the fault, paging or media configuration (and reset counters)."""
        if faults is not None:
            self.faults = faults
        if paging is not None:
            self.paging = paging
        if media is not None:
            self.media = media
        self.reset()

    # --- faults --------------------------------------------------------------------------------
    def _hits(self, name: str, fault: Fault | None, target: str, resource: str) -> bool:
        if fault is None or target not in fault.on:
            return False
        if _unit(self.tenant.spec.seed, name, resource) >= fault.ratio:
            return False
        with self._fault_lock:
            n = self._fault_counts[(name, resource)]
            self._fault_counts[(name, resource)] = n + 1
        return fault.times < 0 or n < fault.times

    def _rate_limited(self) -> float | None:
        rate = self.faults.rate_limit
        if rate <= 0:
            return None
        with self._bucket_lock:
            tokens, last = self._bucket
            now = time.monotonic()
            tokens = min(self.faults.rate_limit_burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._bucket = (tokens - 1.0, now)
                return None
            self._bucket = (tokens, now)
            return (1.0 - tokens) / rate

    def _retry_after_header(self) -> str | None:
        mode = self.faults.retry_after
        if mode == "none":
            return None
        if mode.startswith("date:"):
            ahead = float(mode.split(":", 1)[1])
            return format_datetime(datetime.fromtimestamp(time.time() + ahead, tz=timezone.utc), usegmt=True)
        return mode

    # --- request handling ----------------------------------------------------------------------
    def _record(self, h: _Handler, server: str, route: str) -> None:
        with self.stats.lock:
            self.stats.requests[f"{server}:{route}"] += 1
            self.stats.authorization[server].append(h.headers.get("Authorization"))
            self.stats.hosts[server][h.headers.get("Host", "")] += 1
            self.stats.seen.append(
                (server, h.headers.get("Host", ""), urllib.parse.urlsplit(h.path).path, h.headers.get("Authorization"))
            )
            if server == "api":
                self.stats.api_times.append(time.monotonic())

    def _status(self, server: str, status: int) -> None:
        with self.stats.lock:
            self.stats.statuses[f"{server}:{status}"] += 1
            if status == 429:
                self.stats.throttled += 1

    def _dispatch(self, h: _Handler, server: str) -> None:
        with self._idle:
            self._active += 1
        try:
            self._route(h, server)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (e.g. a slow answer to a client that gave up)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _route(self, h: _Handler, server: str) -> None:
        parts = urllib.parse.urlsplit(h.path)
        path = parts.path
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if server == "media":
            self._record(h, "media", "media")
            self._media_download(h, path, query)
            return
        if path == "/v3/engagements":
            route, target, resource = "list", "list", "list:" + parts.query
        elif path.startswith("/api/v1/conversations/") and path.endswith("/media"):
            cid = path[len("/api/v1/conversations/") : -len("/media")]
            route, target, resource = "media_api", "media_api", "media_api:" + cid
        elif path.startswith("/api/v1/conversations/"):
            cid = path[len("/api/v1/conversations/") :]
            route, target, resource = "conversation", "conversation", "conversation:" + cid
        else:
            self._record(h, "api", "unknown")
            self._send_json(h, 404, _error(404, "Not found", NOT_FOUND), jsonapi=True)
            return
        self._record(h, "api", route)
        if not self._authorized(h.headers.get("Authorization")):
            self._send_json(
                h, 401, _error(401, "Unauthorized", "The API token is invalid or was revoked.", "ZI0001"), jsonapi=True
            )
            return
        wait = self._rate_limited()
        if wait is not None:
            with self.stats.lock:
                self.stats.rate_limited += 1
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.faults.rate_limit_retry_after else {}
            self._send_json(h, 429, _error(429, "Too Many Requests", "rate limit exceeded"), headers=headers, jsonapi=True)
            return
        if not self._common_faults(h, "api", target, resource):
            return
        if route == "list":
            self._engagements(h, query, resource)
        elif route == "conversation":
            self._conversation(h, cid, query, resource)
        else:
            self._media_api(h, cid, query, resource)

    def _authorized(self, value: str | None) -> bool:
        if not value:
            return False
        forms = []
        if "raw" in self.accept_auth:
            forms.append(self.token)
        if "bearer" in self.accept_auth:
            forms.append("Bearer " + self.token)
        return any(hmac.compare_digest(value.encode(), f.encode()) for f in forms)

    def _common_faults(self, h: _Handler, server: str, target: str, resource: str) -> bool:
        """Apply slow / throttle / 500 faults. False when the request was answered."""
        f = self.faults
        if self._hits("slow", f.slow, target, resource):
            time.sleep(f.slow_seconds)
        if self._hits("throttle", f.throttle, target, resource):
            ra = self._retry_after_header()
            self._send_json(
                h,
                429,
                _error(429, "Too Many Requests", "slow down"),
                headers={"Retry-After": ra} if ra else {},
                jsonapi=True,
                server=server,
            )
            return False
        if self._hits("server_error", f.server_error, target, resource):
            self._send_json(h, 500, _error(500, "Internal Server Error", "simulated failure"), jsonapi=True, server=server)
            return False
        return True

    # --- responses -----------------------------------------------------------------------------
    def _send_json(
        self,
        h: _Handler,
        status: int,
        doc: Any,
        *,
        headers: dict[str, str] | None = None,
        jsonapi: bool = False,
        target: str | None = None,
        resource: str | None = None,
        body: bytes | None = None,
        server: str = "api",
    ) -> None:
        data = body if body is not None else json.dumps(doc, ensure_ascii=False).encode()
        ctype = "application/vnd.api+json" if jsonapi else "application/json"
        self._send(h, status, {"Content-Type": ctype, **(headers or {})}, [data], len(data), target, resource, server)

    def _send(
        self,
        h: _Handler,
        status: int,
        headers: dict[str, str],
        chunks: Iterable[bytes],
        length: int,
        target: str | None,
        resource: str | None,
        server: str,
    ) -> None:
        self._status(server, status)
        cut: int | None = None
        how = ""
        if target is not None and resource is not None and length > 1:
            if self._hits("reset", self.faults.reset, target, resource):
                cut, how = length // 2, "reset"
            elif self._hits("truncate", self.faults.truncate, target, resource):
                cut, how = length // 2, "truncate"
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        sent = 0
        for piece in chunks:
            if cut is not None and sent + len(piece) >= cut:
                piece = piece[: cut - sent]
                h.wfile.write(piece)
                sent += len(piece)
                self._break(h, how)
            h.wfile.write(piece)
            sent += len(piece)
            if server == "media" or target == "media_api":
                with self.stats.lock:
                    self.stats.media_bytes += len(piece)

    def _break(self, h: _Handler, how: str) -> None:
        h.close_connection = True
        conn = h.connection
        try:
            if how == "reset":
                # let the client read what was sent, so that the reset comes mid-body
                time.sleep(0.03)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.rfile.close()
                conn.close()
            else:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Abort(how)

    # --- /v3/engagements -------------------------------------------------------------------------
    def _engagements(self, h: _Handler, q: dict[str, str], resource: str) -> None:
        with self.stats.lock:
            self.stats.list_queries.append(dict(q))
        lo = hi = None
        if "min_date" in q:
            lo = _parse_date(q["min_date"])
            if lo is None:
                self._send_json(h, 400, {"message": "min_date must be an ISO-8601 date-time"})
                return
        if "max_date" in q:
            hi = _parse_date(q["max_date"])
            if hi is None:
                self._send_json(h, 400, {"message": "max_date must be an ISO-8601 date-time"})
                return
        types = {t for t in q.get("engagement_type", "").split(",") if t}
        ids = {t for t in q.get("engagement_id", "").split(",") if t}
        filters = json.dumps([q.get("min_date"), q.get("max_date"), sorted(types), sorted(ids)])
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
            if issued != filters:
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
        doc: dict[str, Any] = {"engagements": [self.tenant.engagement(c) for c in page]}
        if not end or (marker == "empty_page" and page):
            last = page[-1]
            next_key = f"{last.date_time}.0 {last.engagement_id}"
            self._issued_keys[next_key] = filters
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

    # --- /api/v1/conversations/{id} -------------------------------------------------------------
    def _visible(self, h: _Handler, cid: str, what: str) -> Call | None:
        call = self.tenant.by_id.get(cid)
        if call is None or call.private or call.hidden == "not_found":
            self._send_json(h, 404, _error(404, "Not found", NOT_FOUND), jsonapi=True)
            return None
        if call.hidden == "forbidden":
            self._send_json(h, 403, _error(403, "Forbidden", "API may not be called using this token."), jsonapi=True)
            return None
        if what == "media" and call.engagement_type not in ("meeting", "dialer"):
            self._send_json(h, 404, _error(404, "Not found", "This conversation has no media."), jsonapi=True)
            return None
        return call

    def _conversation(self, h: _Handler, cid: str, q: dict[str, str], resource: str) -> None:
        if "application/vnd.api+json" not in h.headers.get("Accept", ""):
            self._send_json(h, 406, _error(406, "Not Acceptable", "Accept must be application/vnd.api+json"), jsonapi=True)
            return
        call = self._visible(h, cid, "conversation")
        if call is None:
            return
        fields = {f.strip() for f in q["fields"].split(",")} if "fields" in q else None
        body = self.tenant.conversation_bytes(cid, fields)
        self._send_json(h, 200, None, body=body, jsonapi=True, target="conversation", resource=resource)

    # --- media ---------------------------------------------------------------------------------
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

    def _media_api(self, h: _Handler, cid: str, q: dict[str, str], resource: str) -> None:
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

    def _media_download(self, h: _Handler, path: str, q: dict[str, str]) -> None:
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

    def _send_xml(self, h: _Handler, status: int, code: str, message: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
        self._send(h, status, {"Content-Type": "application/xml"}, [body], len(body), None, None, "media")

    def _serve_media(self, h: _Handler, call: Call, target: str, resource: str, server: str) -> None:
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
