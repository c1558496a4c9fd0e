"""The HTTP side of the Chorus source: one hardened httpx client, the token, retries, the rate,
error mapping. Media downloads are :mod:`.download`'s; messages are :mod:`.diagnostics`'.

Rules this module keeps:

- Every request goes through :func:`portshift.https_client` (https only, portshift's SSL
  context, no automatic redirects, no proxy or CA variables from the environment), or, for the
  media host and the API's small GETs without ``params`` (a conversation, the media request),
  through :mod:`.media`'s ``http.client`` connections, which keep the same rules (fewer layers
  per request); the API's connections refuse any host but ``base_url``'s.
- Only ``GET``: an export reads the tenant and changes nothing in it. The conversation request
  always carries ``skip_summary_generation=true`` (the API's default would make Chorus generate
  an AI summary for every call the export reads).
- The ``Authorization`` header is added per request, and only when the request goes to the
  origin (scheme, host, port) of ``base_url``. A media link on another host never sees it.
- A media download link is a credential: it is registered with the log scrubber the moment it is
  seen and never logged, stored or put in an error (errors name the link's host only).
- Errors cross this boundary as portshift errors raised ``from None``: no httpx request object,
  no URL with a query string, no header travels up.
- Every wait (the rate limiter, a backoff, a ``Retry-After``) ends at once when ``cancel`` is set.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx

from portshift import (
    Attempts,
    AuthError,
    Backoff,
    ConfigError,
    Opened,
    SkipRecording,
    SourceError,
    https_client,
    parse_retry_after,
    pin_loggers,
    redact_url,
    ssl_context,
)

from .diagnostics import connection_failure, error_text, from_chorus, tls_failure
from .download import JSONAPI, MediaDownloader
from .media import ApiConnections, MediaConnections, MediaResponse
from .options import ChorusOptions
from .pacing import AdaptiveRate, AutoPacing

log = logging.getLogger("portshift.chorus")

#: a path and query made only of characters httpx sends unchanged (no ``#``, space or non-ASCII)
AS_SENT = re.compile(r"[!$%&'()*+,\-./0-9:;=?@A-Z\[\\\]^_a-z|~]*")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: ``check()``: a short connect timeout, and no retry when nothing answers (an unreachable host
#: fails in seconds); an answer that says "later" (429, 5xx) is retried as always
CHECK_CONNECT_TIMEOUT = 5.0

#: httpx logs full URLs (media links with their signature) at INFO and httpcore logs response
#: headers (a redirect's Location) at DEBUG: these loggers, and their children, stay at WARNING
PINNED = ("httpx", "httpcore", "hpack", "h11", "h2")


class ChorusClient:
    """Talks to one Chorus tenant. Thread-safe: the core calls it from several workers."""

    def __init__(self, options: ChorusOptions) -> None:
        if options.token is None:
            raise ConfigError(
                "[source] token: the credential is missing", hint='set PORTSHIFT_CHORUS_TOKEN, or token_file = "/path"'
            )
        self.options = options
        self._token = options.token
        self.base_url = options.base_url
        base = httpx.URL(options.base_url)
        self._origin = self._origin_of(base)
        self._hostport = f"{base.host}:{base.port or 443}"
        # "https://host[:port]/": a URL that starts with it is on base_url's origin (no parse needed)
        split = urllib.parse.urlsplit(options.base_url)
        self._origin_prefix = f"{split.scheme.lower()}://{split.netloc}/" if split.scheme.lower() == "https" else None
        self.location = redact_url(options.base_url)
        #: set by the source from the core's cancel event: every wait ends when it is set
        self.cancel: threading.Event | None = None
        #: tests: a function that replaces waiting for a backoff (it records the delays)
        self.sleep: Callable[[float], None] | None = None
        pin_loggers(PINNED, trees=PINNED)
        timeout = httpx.Timeout(connect=options.connect_timeout, read=options.read_timeout, write=options.read_timeout, pool=None)
        self._check_timeout = httpx.Timeout(
            connect=min(options.connect_timeout, CHECK_CONNECT_TIMEOUT),
            read=options.read_timeout,
            write=options.read_timeout,
            pool=None,
        )
        self.http = https_client(options.ca_bundle, timeout=timeout, max_connections=32)
        #: the media host (another origin, no token): bodies read with http.client, see media.py
        ctx = ssl_context(options.ca_bundle)
        self.media = MediaConnections(ctx, connect_timeout=options.connect_timeout, read_timeout=options.read_timeout)
        #: the API's own origin, for its GETs without params (the token goes there and nowhere else)
        self.api = ApiConnections(
            ctx, self._origin[1:], connect_timeout=options.connect_timeout, read_timeout=options.read_timeout
        )
        rps = options.requests_per_second
        self.pacing: AdaptiveRate | AutoPacing = (
            AutoPacing(options.min_requests_per_second, burst=options.burst)
            if rps == "auto"
            else AdaptiveRate(rps, options.min_requests_per_second, burst=options.burst)
        )
        self.limiter = self.pacing.limiter
        self.backoff = Backoff(
            base=options.backoff_base, cap=options.backoff_cap, attempts=options.retries + 1, budget=options.retry_budget
        )
        self._lock = threading.Lock()
        #: the conversation request's query, encoded once exactly as httpx encodes ``params``
        #: (httpx then parses the URL once instead of merging the params into it per request)
        fields = list(options.conversation_fields)
        fields += [a for a in ("summary", "action_items") if a in options.artifacts and a not in fields]
        self._conversation_query = self._query(fields)
        self._presence_query = self._query(("name", "status"))
        #: requests sent, by kind (for tests and the debug log)
        self.sent: dict[str, int] = {}
        self.downloader = MediaDownloader(self)

    @staticmethod
    def _query(fields: Any) -> str:
        return "?" + str(httpx.QueryParams({"fields": ",".join(fields), "skip_summary_generation": "true"}))

    # --- plumbing --------------------------------------------------------------------------
    @staticmethod
    def _origin_of(url: httpx.URL) -> tuple[str, str, int]:
        return (url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80))

    def same_origin(self, url: str | httpx.URL) -> bool:
        if isinstance(url, str):
            if self._origin_prefix and url.startswith(self._origin_prefix):
                return True  # the API's own URLs (api_url): the common case, without parsing
            url = httpx.URL(url)
        # an httpx.URL (a followed link, a response's URL) is used as parsed: no second parse
        return self._origin_of(url) == self._origin

    def _auth_value(self) -> str:
        token = self._token.reveal()
        return f"Bearer {token}" if self.options.auth_scheme == "bearer" else token

    @staticmethod
    def where(url: str | httpx.URL, api: bool) -> str:
        """Where a request went, safe to show: the API path, or only the media link's host."""
        if api:
            return redact_url(str(url))
        u = httpx.URL(str(url))
        return f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port else "")

    def close(self) -> None:
        self.http.close()
        self.media.close()
        self.api.close()

    def request(
        self,
        url: str | httpx.URL,
        *,
        operation: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        check: bool = False,
    ) -> httpx.Response | MediaResponse:
        """GET ``url``, retrying 408/429/5xx, resets and timeouts with backoff and jitter.

        A 429 is retried while the time spent waiting stays within ``retry_budget`` (a tenant
        limited to 10 requests a minute needs minutes, not a count of tries); the rest ``retries``
        times. Returns the response for any other status (read, unless ``stream``). A 401 from
        the Chorus API raises :class:`AuthError` at once. ``check``: a short connect timeout and no
        retry when nothing answers (``portshift check`` on an unreachable host answers in seconds).
        """
        api = self.same_origin(url)
        policy = self.backoff
        attempts = Attempts(policy, cancel=self.cancel, what=f"waiting to retry {operation}", sleep=self.sleep)
        while True:
            sent_at = self.pacing.acquire(self.cancel) if api else 0.0
            with self._lock:
                self.sent[operation] = self.sent.get(operation, 0) + 1
            failure: str | None = None
            hint_text: str | None = None
            status: int | None = None
            hint: float | None = None
            try:
                resp = self._send(url, params, headers, api, check)
            except httpx.TransportError as e:
                tls = tls_failure(e)
                if tls is not None:
                    message, tls_hint = tls
                    raise SourceError(
                        message, operation=operation, location=self.where(url, api), retryable=False, hint=tls_hint
                    ) from None
                failure, hint_text = connection_failure(e, self._hostport if api else self.where(url, False))
            else:
                status = resp.status_code
                if status == 401 and api:
                    resp.close()
                    raise AuthError(
                        "the Chorus token was rejected",
                        operation=operation,
                        status=401,
                        location=self.location,
                        hint="check PORTSHIFT_CHORUS_TOKEN / token_file, and auth_scheme (raw or bearer)",
                    )
                if status in RETRY_STATUSES:
                    hint = parse_retry_after(resp.headers.get("retry-after"), cap=self.options.max_retry_after)
                    failure = self._read_error(resp)
                elif not stream:
                    try:
                        resp.read()
                    except httpx.TimeoutException:
                        failure = "timed out while reading the answer"
                    except httpx.TransportError as e:
                        failure = f"the answer broke off ({type(e).__name__})"
                    finally:
                        resp.close()
                    if failure is None:
                        if api:
                            self.pacing.succeeded(sent_at)
                        return resp
                else:
                    if api:
                        self.pacing.succeeded(sent_at)
                    return resp
            # --- only failures that may be retried get here ---------------------------------
            # a 429 goes on within the time budget; anything else gets ``retries`` retries; for
            # ``check``, no answer at all fails at once (an unreachable host, a wrong base_url)
            spent = (status is None and check) or (status != 429 and attempts.count >= policy.attempts)
            delay = None if spent else attempts.next_delay(hint)
            if delay is None:
                raise SourceError(
                    f"gave up after {attempts.count} attempt{'s' if attempts.count > 1 else ''}: {failure}",
                    operation=operation,
                    status=status,
                    location=self.where(url, api),
                    retryable=True,
                    hint=hint_text,
                )
            if status == 429 and api:
                self.limiter.pause(delay)  # everyone slows down, not just this thread
                self.pacing.throttled(sent_at)
            log.info(
                "%s: %s%s; retry %d in %.2fs",
                operation,
                failure,
                f" (HTTP {status})" if status else "",
                attempts.count,
                delay,
            )
            attempts.wait(delay)

    def _send(
        self, url: str | httpx.URL, params: dict[str, str] | None, headers: dict[str, str] | None, api: bool, check: bool
    ) -> httpx.Response | MediaResponse:
        # The only frame that holds the revealed token (as a header of the request it builds);
        # the token goes only to base_url's origin.
        hdrs = dict(headers or {})
        if api:
            hdrs["Authorization"] = self._auth_value()
            if params is None and not check:  # a small GET on the API: without httpx's layers (media.py)
                if isinstance(url, str) and self._origin_prefix and url.startswith(self._origin_prefix):
                    target = url[len(self._origin_prefix) - 1 :]
                    if AS_SENT.fullmatch(target):  # built here, already as httpx would send it: no parse
                        return self.api.get_path(target, url, hdrs)
                return self.api.get(url if isinstance(url, httpx.URL) else httpx.URL(url), hdrs)
        elif params is None:
            # a media link on another origin (no token): its body is read with http.client
            return self.media.get(url if isinstance(url, httpx.URL) else httpx.URL(url), hdrs)
        timeout = self._check_timeout if check else httpx.USE_CLIENT_DEFAULT
        return self.http.send(self.http.build_request("GET", url, params=params, headers=hdrs, timeout=timeout), stream=True)

    @staticmethod
    def _read_error(resp: httpx.Response | MediaResponse) -> str:
        try:
            body = resp.read()
        except httpx.HTTPError:
            body = b""
        finally:
            resp.close()
        return error_text(body, resp.status_code)

    def api_url(self, path: str) -> str:
        return self.base_url + path

    # --- listing -------------------------------------------------------------------------------
    def list_page(self, params: dict[str, str], *, check: bool = False) -> dict[str, Any]:
        """One page of ``GET /v3/engagements``."""
        op = "list engagements"
        resp = self.request(
            self.api_url("/v3/engagements"), operation=op, params=params, headers={"Accept": "application/json"}, check=check
        )
        status = resp.status_code
        # an error's body only: a page is parsed once, below
        chorus = status != 200 and from_chorus(resp.content, resp.headers.get("content-type"))
        if status == 403 and chorus:
            raise AuthError(
                f"the token may not list engagements: {error_text(resp.content, status)}",
                operation=op,
                status=403,
                location=self.location,
                hint="the token's user needs API access (roles & permissions)",
            )
        if status != 200:
            not_chorus = status in (403, 404) and not chorus
            raise SourceError(
                "the answer does not come from the Chorus API (no JSON error body): a wrong host, or a proxy or "
                f"firewall refusing the request (HTTP {status})"
                if not_chorus
                else error_text(resp.content, status),
                operation=op,
                status=None if not_chorus else status,
                location=redact_url(str(resp.url)),
                retryable=False,
                hint=f"is base_url ({self.location}) the Chorus API host (https://chorus.ai)?"
                if not_chorus or status == 404
                else None,
            )
        try:
            doc = json.loads(resp.content)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("engagements", []), list):
            raise SourceError(
                "the answer is not an engagements page",
                operation=op,
                status=status,
                location=self.location,
                hint=f"is base_url ({self.location}) the Chorus API host?",
            )
        return doc

    # --- one call ------------------------------------------------------------------------------
    def _per_call(self, op: str, cid: str, resp: httpx.Response | MediaResponse, body: bytes) -> None:
        """Raise for a non-2xx answer about one call: 403/404 skip it (or fail, when strict)."""
        status = resp.status_code
        where = redact_url(str(resp.url))
        if status in (403, 404):
            reason = "forbidden" if status == 403 else "not_found"
            text = error_text(body, status)
            message = f"call {cid}: {op} answered HTTP {status} ({text}); private, or not visible to the token's user"
            if self.options.strict:
                raise SourceError(message, operation=op, status=status, location=where, retryable=False)
            raise SkipRecording(reason, message)
        raise SourceError(error_text(body, status), operation=op, status=status, location=where, retryable=False)

    def conversation(self, cid: str, *, full: bool = True) -> tuple[bytes, dict[str, Any]]:
        """``GET /api/v1/conversations/{id}`` with the configured fields (``full``) or just enough
        to know the call is there: the document exactly as Chorus returned it, and parsed."""
        op = "get conversation"
        query = self._conversation_query if full else self._presence_query
        resp = self.request(
            self.api_url(f"/api/v1/conversations/{urllib.parse.quote(cid, safe='')}") + query,
            operation=op,
            headers={"Accept": JSONAPI},
        )
        if resp.status_code != 200:
            self._per_call(op, cid, resp, resp.content)
        return resp.content, self._jsonapi(resp, f"call {cid}: the conversation answer", op)

    def _jsonapi(self, resp: httpx.Response | MediaResponse, what: str, op: str) -> dict[str, Any]:
        try:
            doc = json.loads(resp.content)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), (dict, list)):
            raise SourceError(f"{what} is not a JSON:API document", operation=op, location=redact_url(str(resp.url)))
        return doc

    def get_jsonapi(self, path: str, op: str, params: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, Any] | None]:
        """``GET`` a JSON:API resource: (status, body, parsed document or None when not 200)."""
        resp = self.request(self.api_url(path), operation=op, params=params, headers={"Accept": JSONAPI})
        if resp.status_code != 200:
            return resp.status_code, resp.content, None
        return 200, resp.content, self._jsonapi(resp, f"the {op} answer", op)

    def open_media(self, cid: str) -> Opened:
        """Open a call's media for reading (called again for a retry)."""
        return self.downloader.open(cid)

    def open_media_from(self, cid: str, offset: int, validator: str | None) -> Opened:
        """A call's media from byte ``offset`` on, if it is still the same bytes (see download.py)."""
        return self.downloader.open_from(cid, offset, validator)
