"""The simulator's switches: faults, paging, media answers, tenant behaviours, and the
statistics of what it served."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

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
    #: (requests, seconds): a fixed-window limit ("10 per minute"), checked before ``rate_limit``
    rate_window: tuple[int, float] | None = None


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


@dataclass
class Behaviour:
    """How the tenant behaves where real tenants may differ (each switchable; defaults are what
    the plugin must cope with)."""

    #: ``/v3/engagements`` ignores ``min_date``/``max_date`` (no public source confirms they are
    #: honoured): every query lists the whole tenant, newest first
    ignore_date_filters: bool = False
    #: ``tracker_matches`` only with ``with_trackers=true`` (the API's default is false)
    trackers_only_on_request: bool = True
    #: a conversation read without ``skip_summary_generation=true`` makes Chorus generate an AI
    #: summary (a change to the tenant, recorded in :attr:`Stats.writes`)
    summary_on_read: bool = True
    #: ``GET /api/v1/scorecards`` answers 403 (the token's user may not read scorecards)
    scorecards_forbidden: bool = False
    #: something that is not the Chorus API (a proxy, a firewall, another web server) answers
    #: every API request with an HTML 403
    foreign_403: bool = False
    #: the token's user may not call the API: ``/v3/engagements`` answers Chorus's own JSON 403
    listing_forbidden: bool = False


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
    rate_limited_times: list[float] = field(default_factory=list)  #: monotonic time of each of them
    links_issued: int = 0
    media_bytes: int = 0
    #: server ("api"/"media") -> every Authorization header value received (None when absent)
    authorization: dict[str, list[str | None]] = field(default_factory=lambda: {"api": [], "media": []})
    #: server -> Host headers received
    hosts: dict[str, Counter[str]] = field(default_factory=lambda: {"api": Counter(), "media": Counter()})
    api_times: list[float] = field(default_factory=list)  #: monotonic time of every API request
    list_queries: list[dict[str, str]] = field(default_factory=list)  #: /v3/engagements query parameters
    conversation_queries: list[dict[str, str]] = field(default_factory=list)  #: /api/v1/conversations/{id} queries
    links: list[str] = field(default_factory=list)  #: media links handed out (tests grep logs for them)
    #: requests that would change the tenant: (method, path, why) — an export must cause none
    writes: list[tuple[str, str, str]] = field(default_factory=list)
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
