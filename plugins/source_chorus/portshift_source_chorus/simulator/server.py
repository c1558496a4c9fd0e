"""The Chorus API simulator: two real HTTPS servers on loopback.

- the **API server** answers ``GET /v3/engagements``, ``GET /api/v1/conversations/{id}`` and
  ``GET /api/v1/conversations/{id}/media`` with the quirks of the real API (newest first, a
  single-space ``continuation_key`` at the end, duplicates across pages, JSON:API ``errors[]``);
- the **media server**, on a second port, serves recordings behind signed, expiring links
  (``/media/{id}?expires=...&sig=...``) with ``Range`` support, as a storage CDN would.

Every fault and behaviour is switchable (see :class:`Faults`, :class:`Behaviour`), and
:class:`Stats` counts what was served, records any request that would change the tenant, and
records which ``Authorization`` headers reached which server, so tests can prove the token never
went to the media host. This is test and demo tooling: it is never trusted implicitly (its
throw-away CA must be passed to clients with ``ca_bundle``).

The routes live in mixins: :mod:`.engagements`, :mod:`.conversations`, :mod:`.media_routes`;
answers are written by :mod:`.replies`, over :mod:`.https_server`.
"""

from __future__ import annotations

import hmac
import math
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from .certs import ServerCerts, make_certs
from .config import NOT_FOUND, TARGETS, Behaviour, Fault, Faults, MediaConfig, Paging, Stats
from .conversations import ConversationRoutes
from .engagements import EngagementRoutes
from .https_server import Handler, Server, error
from .media_routes import MediaRoutes
from .replies import Replies
from .tenant import Tenant, TenantSpec, _unit

__all__ = ["TARGETS", "Behaviour", "ChorusSimulator", "Fault", "Faults", "MediaConfig", "Paging", "Stats"]


class ChorusSimulator(Replies, EngagementRoutes, ConversationRoutes, MediaRoutes):
    """A Chorus tenant on loopback, over HTTPS. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        tenant: Tenant | None = None,
        *,
        token: str | None = None,
        faults: Faults | None = None,
        paging: Paging | None = None,
        media: MediaConfig | None = None,
        behaviour: Behaviour | None = None,
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
        self.behaviour = behaviour or Behaviour()
        self.accept_auth = accept_auth
        self.host = host
        self.stats = Stats()
        self._port, self._media_port = port, media_port
        self._ca_path = Path(ca_path) if ca_path else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._link_key = secrets.token_bytes(32)
        self._fault_counts: Counter[tuple[str, str]] = Counter()
        self._fault_lock = threading.Lock()
        # full, as after a reset: a client's first requests may come the instant the server is up
        self._bucket = (self.faults.rate_limit_burst, time.monotonic())
        self._bucket_lock = threading.Lock()
        self._window = (0.0, 0)
        self._limit_since = time.monotonic()
        self._issued_keys: dict[str, set[str]] = {}
        self._active = 0
        self._idle = threading.Condition()
        self._servers: list[Server] = []
        self._threads: list[threading.Thread] = []
        self.certs: ServerCerts | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ChorusSimulator:
        self.certs = make_certs((self.host, "localhost") if self.host != "localhost" else ("localhost", "127.0.0.1"))
        ctx = self.certs.server_context()
        self.api = Server((self.host, self._port), self, "api", ctx)
        self.media_server = Server((self.host, self._media_port), self, "media", ctx)
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
            self._window = (0.0, 0)
            self._limit_since = time.monotonic()

    def injected(self) -> Counter[str]:
        """How many faults were injected since the last reset, per fault name ("reset", ...)."""
        out: Counter[str] = Counter()
        with self._fault_lock:
            for (name, _resource), n in self._fault_counts.items():
                fault = getattr(self.faults, name, None)
                times = fault.times if isinstance(fault, Fault) else 0
                out[name] += n if times < 0 else min(n, times)
        return out

    def configure(
        self,
        faults: Faults | None = None,
        paging: Paging | None = None,
        media: MediaConfig | None = None,
        behaviour: Behaviour | None = None,
    ) -> None:
        """Replace the fault, paging, media or behaviour configuration (and reset counters)."""
        if behaviour is not None:
            self.behaviour = behaviour
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
        window = self.faults.rate_window
        if window is not None:  # N requests per fixed window of W seconds, as "10/min" suggests
            allowed, seconds = window
            with self._bucket_lock:
                now = time.monotonic()
                start, count = self._window
                if now - start >= seconds:
                    start, count = now, 0
                if count < allowed:
                    self._window = (start, count + 1)
                    return None
                self._window = (start, count)
                return start + seconds - now
        with self._bucket_lock:
            now = time.monotonic()
            rate = self.rate_limit_now(now)
            if rate <= 0:
                return None
            tokens, last = self._bucket
            tokens = min(self.faults.rate_limit_burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._bucket = (tokens - 1.0, now)
                return None
            self._bucket = (tokens, now)
            return (1.0 - tokens) / rate

    def rate_limit_now(self, now: float | None = None) -> float:
        """The requests per second enforced at ``now`` (monotonic; 0: none)."""
        rate, halve = self.faults.rate_limit, self.faults.rate_limit_halve_after
        if halve > 0 and (time.monotonic() if now is None else now) - self._limit_since >= halve:
            return rate / 2
        return rate

    def _retry_after_header(self) -> str | None:
        mode = self.faults.retry_after
        if mode == "none":
            return None
        if mode.startswith("date:"):
            ahead = float(mode.split(":", 1)[1])
            return format_datetime(datetime.fromtimestamp(time.time() + ahead, tz=timezone.utc), usegmt=True)
        return mode

    # --- request handling ----------------------------------------------------------------------
    def _record(self, h: Handler, server: str, route: str) -> None:
        with self.stats.lock:
            self.stats.requests[f"{server}:{route}"] += 1
            self.stats.authorization[server].append(h.headers.get("Authorization"))
            self.stats.hosts[server][h.headers.get("Host", "")] += 1
            self.stats.seen.append(
                (server, h.headers.get("Host", ""), urllib.parse.urlsplit(h.path).path, h.headers.get("Authorization"))
            )
            if server == "api":
                self.stats.api_times.append(time.monotonic())

    def _dispatch(self, h: Handler, server: str) -> None:
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

    def _route(self, h: Handler, server: str) -> None:
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
        elif path.startswith("/api/v1/emails/"):
            cid = path[len("/api/v1/emails/") :]
            route, target, resource = "email", "email", "email:" + cid
        elif path == "/api/v1/scorecards":
            route, target, resource = "scorecards", "scorecards", "scorecards:" + parts.query
        else:
            self._record(h, "api", "unknown")
            self._send_json(h, 404, error(404, "Not found", NOT_FOUND), jsonapi=True)
            return
        self._record(h, "api", route)
        if route == "list":  # every listing request, answered or not
            with self.stats.lock:
                self.stats.list_queries.append(dict(query))
        if self.behaviour.foreign_403:
            body = b"<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>"
            self._send(h, 403, {"Content-Type": "text/html"}, [body], len(body), None, None, "api")
            return
        if not self._authorized(h.headers.get("Authorization")):
            self._send_json(
                h, 401, error(401, "Unauthorized", "The API token is invalid or was revoked.", "ZI0001"), jsonapi=True
            )
            return
        wait = self._rate_limited()
        if wait is not None:
            with self.stats.lock:
                self.stats.rate_limited += 1
                self.stats.rate_limited_times.append(time.monotonic())
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.faults.rate_limit_retry_after else {}
            self._send_json(h, 429, error(429, "Too Many Requests", "rate limit exceeded"), headers=headers, jsonapi=True)
            return
        if not self._common_faults(h, "api", target, resource):
            return
        if route == "list":
            self._engagements(h, query, resource)
        elif route == "conversation":
            self._conversation(h, cid, query, resource)
        elif route == "email":
            self._email(h, cid)
        elif route == "scorecards":
            self._scorecards(h, query)
        else:
            self._media_api(h, cid, query, resource)

    def _refuse_write(self, h: Handler) -> None:
        """Any method but GET would change the tenant: recorded (tests assert there is none)."""
        with self.stats.lock:
            self.stats.writes.append((h.command, urllib.parse.urlsplit(h.path).path, "method"))
        length = h.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= 1 << 20:
            h.rfile.read(int(length))
        self._send_json(h, 405, error(405, "Method Not Allowed", "read-only simulator"), jsonapi=True)

    def _authorized(self, value: str | None) -> bool:
        if not value:
            return False
        forms = []
        if "raw" in self.accept_auth:
            forms.append(self.token)
        if "bearer" in self.accept_auth:
            forms.append("Bearer " + self.token)
        return any(hmac.compare_digest(value.encode(), f.encode()) for f in forms)

    def _common_faults(self, h: Handler, server: str, target: str, resource: str) -> bool:
        """Apply slow / throttle / 500 faults. False when the request was answered."""
        f = self.faults
        if self._hits("slow", f.slow, target, resource):
            time.sleep(f.slow_seconds)
        if self._hits("throttle", f.throttle, target, resource):
            ra = self._retry_after_header()
            self._send_json(
                h,
                429,
                error(429, "Too Many Requests", "slow down"),
                headers={"Retry-After": ra} if ra else {},
                jsonapi=True,
                server=server,
            )
            return False
        if self._hits("server_error", f.server_error, target, resource):
            self._send_json(h, 500, error(500, "Internal Server Error", "simulated failure"), jsonapi=True, server=server)
            return False
        return True
