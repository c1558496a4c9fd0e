"""The HTTP side of the Chorus source: one hardened httpx client, the token, retries, the rate
limiter, error mapping and media downloads.

Rules this module keeps:

- Every request goes through :func:`portshift.tls.https_client` (https only, portshift's SSL
  context, no automatic redirects, no proxy or CA variables from the environment).
- The ``Authorization`` header is added per request, and only when the request goes to the
  origin (scheme, host, port) of ``base_url``. A media link on another host never sees it.
- A media download link is a credential: it is registered with the log scrubber the moment it is
  seen and never logged, stored or put in an error (errors name the link's host only).
- Errors cross this boundary as portshift errors raised ``from None``: no httpx request object,
  no URL with a query string, no header travels up.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from portshift.api import Opened
from portshift.errors import AuthError, ConfigError, SkipRecording, SourceError
from portshift.redact import redact_url, sanitize_message
from portshift.retry import Backoff, RateLimiter, parse_retry_after
from portshift.secrets import forget_mask, register_mask
from portshift.tls import DROPPED_UNDER_TLS, https_client, ssl_context

from .media import MediaConnections, MediaResponse
from .options import ChorusOptions

log = logging.getLogger("portshift.chorus")

JSONAPI = "application/vnd.api+json"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_HOPS = 5
MAX_ERROR_BODY = 64 * 1024

#: file extension by media type (the final response's Content-Type)
EXTENSIONS = {
    "video/mp4": "mp4",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "aac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/webm": "webm",
    "video/webm": "webm",
    "audio/ogg": "ogg",
    "video/ogg": "ogv",
    "audio/flac": "flac",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
    "video/x-msvideo": "avi",
    "video/x-flv": "flv",
    "video/3gpp": "3gp",
    "audio/3gpp": "3gp",
    "audio/basic": "au",
    "application/vnd.apple.mpegurl": "m3u8",
    "application/octet-stream": "bin",
}

#: keys that may hold the download link in the JSON answer of /media (undocumented: probed in order)
LINK_KEYS = (
    "url",
    "download_url",
    "downloadUrl",
    "media_url",
    "mediaUrl",
    "signed_url",
    "signedUrl",
    "download_link",
    "downloadLink",
    "link",
    "href",
    "location",
)


PINNED = ("httpx", "httpcore", "hpack", "h11", "h2")


def pin_loggers() -> None:
    """httpx logs full URLs (media links with their signature) at INFO and httpcore logs response
    headers (a redirect's Location) at DEBUG: keep them, and any child logger someone configured
    more verbosely, at WARNING."""
    for name in PINNED:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(tuple(p + "." for p in PINNED)):
            logging.getLogger(name).setLevel(logging.WARNING)


def extension_for(content_type: str | None) -> str:
    if not content_type:
        return "bin"
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in EXTENSIONS:
        return EXTENSIONS[ctype]
    guessed = mimetypes.guess_extension(ctype, strict=False)
    if guessed and guessed[1:].isalnum():
        return guessed[1:]
    return "bin"


def error_text(body: bytes, status: int) -> str:
    """A clear, one-line message from a Chorus error body: JSON:API ``errors[]`` (``/api/v1``),
    or the undocumented ``/v3`` shapes (``message``, ``errors`` as strings). Never raw HTML."""
    try:
        doc = json.loads(body[:MAX_ERROR_BODY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"HTTP {status}"
    parts: list[str] = []
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list):
            for err in errors[:5]:
                if isinstance(err, dict):
                    title = str(err.get("title") or "").strip()
                    detail = str(err.get("detail") or "").strip()
                    text = ": ".join(p for p in (title, detail) if p) or "error"
                    code = err.get("code")
                    if code:
                        text += f" (code {code})"
                    parts.append(text)
                elif isinstance(err, str):
                    parts.append(err)
        for key in ("message", "error", "detail"):
            if not parts and isinstance(doc.get(key), str):
                parts.append(doc[key])
    if not parts:
        return f"HTTP {status}"
    return sanitize_message("; ".join(parts), limit=300)


def find_link(doc: Any) -> str | None:
    """The download link in the JSON answer of ``/media`` (field names are undocumented)."""
    level: list[Any] = [doc]
    fallback: str | None = None
    for _ in range(6):
        nxt: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                for key in LINK_KEYS:
                    value = node.get(key)
                    if isinstance(value, str) and "://" in value:
                        return value
                for key, value in node.items():
                    if isinstance(value, (dict, list)):
                        nxt.append(value)
                    elif (
                        fallback is None
                        and isinstance(value, str)
                        and "://" in value
                        and ("url" in str(key).lower() or "link" in str(key).lower())
                    ):
                        fallback = value
            elif isinstance(node, list):
                nxt.extend(node)
        level = nxt
    return fallback


def _drain(resp: httpx.Response | MediaResponse) -> None:
    """Close a response; read a small body first so that its connection can be reused."""
    try:
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= MAX_ERROR_BODY:
            resp.read()
    except httpx.HTTPError:
        pass
    finally:
        resp.close()


def _tls_failure(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) when ``e`` is a TLS failure that no retry can fix, else None.

    Certificate verification failures keep OpenSSL's verify reason (a host name or an issuer
    problem: no secret). Any other SSL error raised while connecting (a protocol version the
    server refuses, a handshake alert) is a handshake failure. An EOF or zero-return after the
    handshake is a dropped connection and stays retryable.
    """
    connecting = isinstance(e, httpx.ConnectError)
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            reason = (cur.verify_message or cur.reason or "").strip().rstrip(".")
            if "hostname mismatch" in reason.lower() or "ip address mismatch" in reason.lower():
                return (
                    f"TLS certificate verification failed: {reason}",
                    "the host name in base_url must be one the server certificate names",
                )
            message = f"TLS certificate verification failed: {reason}" if reason else "TLS certificate verification failed"
            return message, "for a private CA set ca_bundle to its PEM file"
        if isinstance(cur, ssl.SSLError) and not isinstance(cur, DROPPED_UNDER_TLS):
            if "CERTIFICATE" in str(cur):
                return "TLS certificate verification failed", "for a private CA set ca_bundle to its PEM file"
            if connecting:
                reason = cur.reason or type(cur).__name__
                return (
                    f"TLS handshake failed: {reason}",
                    "the server must speak TLS 1.2 or later with a certificate your ca_bundle trusts",
                )
        cur = cur.__cause__ or cur.__context__
    return None


def mask_link(url: str) -> list[str]:
    """A download link is a credential: hide it (and its signature parts) from every log.
    Returns what was masked, so it can be forgotten once the download is over."""
    masked = [url]
    parts = urllib.parse.urlsplit(url)
    if parts.query:
        masked.append(parts.query)
        for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if len(value) >= 12:
                masked.append(value)
    if len(parts.path) >= 24:
        masked.append(parts.path)
    for value in masked:
        register_mask(value)
    return masked


class ChorusClient:
    """Talks to one Chorus tenant. Thread-safe: the core calls it from several workers."""

    def __init__(self, options: ChorusOptions, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if options.token is None:
            raise ConfigError(
                "[source] token: the credential is missing", hint='set PORTSHIFT_CHORUS_TOKEN, or token_file = "/path"'
            )
        self.options = options
        self._token = options.token
        self.base_url = options.base_url
        base = httpx.URL(options.base_url)
        self._origin = self._origin_of(base)
        # "https://host[:port]/": a URL that starts with it is on base_url's origin (no parse needed)
        split = urllib.parse.urlsplit(options.base_url)
        self._origin_prefix = f"{split.scheme.lower()}://{split.netloc}/" if split.scheme.lower() == "https" else None
        self.location = redact_url(options.base_url)
        self.sleep = sleep
        #: masks of the signed links handed out per call, forgotten when its download ends
        self._links: dict[str, list[str]] = {}
        pin_loggers()
        timeout = httpx.Timeout(connect=options.connect_timeout, read=options.read_timeout, write=options.read_timeout, pool=None)
        self.http = https_client(options.ca_bundle, timeout=timeout, max_connections=32)
        #: the media host (another origin, no token): bodies read with http.client, see media.py
        self.media = MediaConnections(
            ssl_context(options.ca_bundle), connect_timeout=options.connect_timeout, read_timeout=options.read_timeout
        )
        self.limiter = RateLimiter(options.requests_per_second, burst=options.burst)
        self.backoff = Backoff(base=options.backoff_base, cap=options.backoff_cap, attempts=options.retries + 1)
        self._lock = threading.Lock()
        #: the conversation request's query, encoded once exactly as httpx encodes ``params``
        #: (httpx then parses the URL once instead of merging the params into it per request)
        self._conversation_query = "?" + str(httpx.QueryParams({"fields": ",".join(options.conversation_fields)}))
        #: requests sent, by kind (for tests and the debug log)
        self.sent: dict[str, int] = {}

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
    def _where(url: str | httpx.URL, api: bool) -> str:
        """Where a request went, safe to show: the API path, or only the media link's host."""
        if api:
            return redact_url(str(url))
        u = httpx.URL(str(url))
        return f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port else "")

    def close(self) -> None:
        self.http.close()
        self.media.close()

    def request(
        self,
        url: str | httpx.URL,
        *,
        operation: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response | MediaResponse:
        """GET ``url``, retrying 408/429/5xx, resets and timeouts with backoff and jitter.

        Returns the response for any other status (read, unless ``stream``). A 401 from the
        Chorus API raises :class:`AuthError` at once.
        """
        api = self.same_origin(url)
        attempts = self.backoff.attempts
        attempt = 0
        while True:
            attempt += 1
            if api:
                self.limiter.acquire()
            with self._lock:
                self.sent[operation] = self.sent.get(operation, 0) + 1
            failure: str | None = None
            status: int | None = None
            hint: float | None = None
            try:
                resp = self._send(url, params, headers, api)
            except httpx.TimeoutException:
                failure = "timed out"
            except httpx.TransportError as e:
                tls = _tls_failure(e)
                if tls is not None:
                    message, tls_hint = tls
                    raise SourceError(
                        message, operation=operation, location=self._where(url, api), retryable=False, hint=tls_hint
                    ) from None
                else:
                    failure = f"connection failed ({type(e).__name__})"
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
                        return resp
                else:
                    return resp
            # --- only failures that may be retried get here ---------------------------------
            if attempt >= attempts:
                raise SourceError(
                    f"gave up after {attempt} attempts: {failure}",
                    operation=operation,
                    status=status,
                    location=self._where(url, api),
                    retryable=True,
                )
            delay = self.backoff.delay(attempt, hint)
            if status == 429 and api:
                self.limiter.pause(delay)  # everyone slows down, not just this thread
            log.info(
                "%s: %s%s; retry %d of %d in %.2fs",
                operation,
                failure,
                f" (HTTP {status})" if status else "",
                attempt,
                attempts - 1,
                delay,
            )
            self.sleep(delay)

    def _send(
        self, url: str | httpx.URL, params: dict[str, str] | None, headers: dict[str, str] | None, api: bool
    ) -> httpx.Response | MediaResponse:
        # The only frame that holds the revealed token (as a header of the request it builds);
        # the token goes only to base_url's origin.
        hdrs = dict(headers or {})
        if api:
            hdrs["Authorization"] = self._auth_value()
        elif params is None:
            # a media link on another origin (no token): its body is read with http.client
            return self.media.get(url if isinstance(url, httpx.URL) else httpx.URL(url), hdrs)
        return self.http.send(self.http.build_request("GET", url, params=params, headers=hdrs), stream=True)

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
    def list_page(self, params: dict[str, str]) -> dict[str, Any]:
        """One page of ``GET /v3/engagements``."""
        op = "list engagements"
        resp = self.request(self.api_url("/v3/engagements"), operation=op, params=params, headers={"Accept": "application/json"})
        status = resp.status_code
        if status == 403:
            raise AuthError(
                f"the token may not list engagements: {error_text(resp.content, status)}",
                operation=op,
                status=403,
                location=self.location,
                hint="the token's user needs API access (roles & permissions)",
            )
        if status != 200:
            raise SourceError(
                error_text(resp.content, status),
                operation=op,
                status=status,
                location=redact_url(str(resp.url)),
                retryable=False,
                hint="is base_url the Chorus API host?" if status == 404 else None,
            )
        try:
            doc = json.loads(resp.content)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("engagements", []), list):
            raise SourceError("the answer is not an engagements page", operation=op, status=status, location=self.location)
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

    def conversation(self, cid: str) -> tuple[bytes, dict[str, Any]]:
        """``GET /api/v1/conversations/{id}`` with the configured fields: the document exactly as
        Chorus returned it, and parsed."""
        op = "get conversation"
        resp = self.request(
            self.api_url(f"/api/v1/conversations/{urllib.parse.quote(cid, safe='')}") + self._conversation_query,
            operation=op,
            headers={"Accept": JSONAPI},
        )
        if resp.status_code != 200:
            self._per_call(op, cid, resp, resp.content)
        body = resp.content
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            raise SourceError(
                f"call {cid}: the conversation answer is not a JSON:API document",
                operation=op,
                location=redact_url(str(resp.url)),
            )
        return body, doc

    # --- media ---------------------------------------------------------------------------------
    def _follow(
        self, resp: httpx.Response | MediaResponse, headers: dict[str, str], cid: str = ""
    ) -> httpx.Response | MediaResponse:
        """Follow redirects and JSON links by hand: https only, the token only to base_url's origin."""
        hops = 0
        while True:
            status = resp.status_code
            ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if status in REDIRECTS:
                location = resp.headers.get("location")
                _drain(resp)
                if not location:
                    raise SourceError("a redirect without a Location", operation="get media", status=status, retryable=True)
                target = resp.url.join(location)
            elif status == 200 and self.same_origin(resp.url) and ctype in ("application/json", JSONAPI):
                try:
                    body = resp.read()
                finally:
                    resp.close()
                try:
                    target_raw = find_link(json.loads(body))
                except ValueError:
                    target_raw = None
                if not target_raw:
                    raise SourceError(
                        "the /media answer carries no download link",
                        operation="get media",
                        location=redact_url(str(resp.url)),
                        retryable=False,
                    )
                target = resp.url.join(target_raw)
            else:
                return resp
            # the joined URL is sent as it is (a long signed link is not parsed again)
            target_text = str(target)
            self._links.setdefault(cid, []).extend(mask_link(target_text))
            hops += 1
            if hops > MAX_HOPS:
                raise SourceError("too many redirects", operation="get media", location=self.location, retryable=True)
            if not target_text.startswith("https://"):  # httpx's join() gives the scheme in lower case
                raise SourceError(
                    "refusing to follow the media link: it is not https",
                    operation="get media",
                    location=self.location,
                    retryable=False,
                )
            resp = self.request(target, operation="download media", headers=headers, stream=True)

    def _fetch_media(self, cid: str, headers: dict[str, str]) -> httpx.Response | MediaResponse:
        """A streaming response with the media bytes (or a Range of them), asking for a new link
        when the media host refuses an expired one."""
        refused = 0
        while True:
            params = {"info": "true"} if self.options.media_info else None
            resp = self.request(
                self.api_url(f"/api/v1/conversations/{urllib.parse.quote(cid, safe='')}/media"),
                operation="get media",
                params=params,
                headers=headers,
                stream=True,
            )
            resp = self._follow(resp, headers, cid)
            status = resp.status_code
            if status in (200, 206):
                return resp
            api = self.same_origin(resp.url)
            body = b""
            try:
                body = resp.read()[:MAX_ERROR_BODY]
            except httpx.HTTPError:
                pass
            finally:
                resp.close()
            if api:
                self._per_call("get media", cid, resp, body)
            if status in (401, 403, 410):  # the media host refused the link: expired or revoked
                refused += 1
                if refused > self.options.link_refreshes:
                    raise SourceError(
                        f"call {cid}: the media host refused {refused} download links (expired?)",
                        operation="download media",
                        status=status,
                        location=self._where(resp.url, False),
                        retryable=True,
                    )
                log.info("call %s: the media link was refused (HTTP %d); asking for a new one", cid, status)
                continue
            raise SourceError(
                f"call {cid}: the media host answered HTTP {status}",
                operation="download media",
                status=status,
                location=self._where(resp.url, False),
                retryable=True,
            )

    def open_media(self, cid: str) -> Opened:
        """Open a call's media for reading (called again for a retry)."""
        resp = self._fetch_media(cid, {"Accept-Encoding": "identity"})
        if resp.status_code != 200:
            resp.close()
            raise SourceError(f"call {cid}: unexpected HTTP {resp.status_code} for the media", retryable=True)
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower() or None
        size: int | None = None
        # asked for identity; a server that compresses anyway gets decoded (and cannot be resumed)
        decoded = resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit() and not decoded:
            size = int(length)
        etag = resp.headers.get("etag")
        final_url = resp.url

        def where() -> str:  # only for an error: not worth a URL parse per download
            return self._where(final_url, self.same_origin(final_url))

        current: dict[str, Any] = {"resp": resp, "closed": False}

        def close() -> None:
            current["closed"] = True  # a download closed from another thread is not resumed
            current["resp"].close()

        def chunks() -> Iterator[bytes]:
            offset = 0
            resumes = 0
            try:
                while True:
                    broke: str | None = None
                    try:
                        body = current["resp"].iter_bytes if decoded else current["resp"].iter_raw
                        for piece in body(self.options.chunk_size):
                            offset += len(piece)
                            yield piece
                    except httpx.TimeoutException:
                        broke = "timed out"
                    except httpx.TransportError as e:
                        broke = type(e).__name__
                    if broke is None:
                        return  # complete: httpx checks the body against Content-Length
                    current["resp"].close()
                    if current["closed"]:
                        raise SourceError(
                            f"call {cid}: the media download was closed",
                            operation="download media",
                            location=where(),
                            retryable=True,
                        )
                    if not self.options.resume_downloads or size is None or resumes >= self.options.retries:
                        raise SourceError(
                            f"call {cid}: the media download broke off after {offset} of {size if size is not None else '?'} "
                            f"bytes ({broke})",
                            operation="download media",
                            location=where(),
                            retryable=True,
                        )
                    resumes += 1
                    delay = self.backoff.delay(resumes)
                    log.info("call %s: media download broke off at byte %d (%s); resuming in %.2fs", cid, offset, broke, delay)
                    self.sleep(delay)
                    current["resp"] = self._resume(cid, offset, size, etag)
            finally:
                current["resp"].close()
                for value in self._links.pop(cid, []):  # the link is spent: keep the mask set small
                    forget_mask(value)

        return Opened(
            chunks=chunks(),
            size=size,
            extension=extension_for(ctype),
            content_type=ctype,
            close=close,
        )

    def _resume(self, cid: str, offset: int, size: int, etag: str | None) -> httpx.Response | MediaResponse:
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={offset}-"}
        if etag:
            headers["If-Range"] = etag
        resp = self._fetch_media(cid, headers)
        ok = resp.status_code == 206
        if ok:
            crange = resp.headers.get("content-range", "")
            try:
                unit, _, rest = crange.partition(" ")
                span, _, total = rest.partition("/")
                first, _, last = span.partition("-")
                ok = unit == "bytes" and int(first) == offset and int(last) == size - 1 and int(total) == size
            except ValueError:
                ok = False
            if ok and etag and resp.headers.get("etag") and resp.headers.get("etag") != etag:
                ok = False
        if not ok:
            status = resp.status_code
            resp.close()
            raise SourceError(
                f"call {cid}: the media cannot be resumed at byte {offset} (HTTP {status}); starting over",
                operation="download media",
                status=status,
                retryable=True,
            )
        return resp
