"""Downloading one call's media: ``/media`` by redirect or JSON link, followed by hand (https
only, the token only to ``base_url``'s origin), fresh links for expired ones, Range resumes.

A 403/404 from the API's ``/media`` means this one file is not there (removed, expired, never
recorded, not visible): :class:`portshift.ArtifactMissing`, so the call's transcript and metadata
are still exported. The media *host* refusing a link (401/403/410) means the link expired: a new
one is asked for.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

from portshift import ArtifactMissing, Attempts, Backoff, Opened, ResumeRefused, SourceError, forget_mask, redact_url

from .diagnostics import MAX_ERROR_BODY, error_text
from .media import MediaResponse
from .media_links import drain, extension_for, find_link, mask_link

if TYPE_CHECKING:
    from .client import ChorusClient

log = logging.getLogger("portshift.chorus")

JSONAPI = "application/vnd.api+json"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_HOPS = 5

Response = httpx.Response | MediaResponse


class MediaDownloader:
    """Opens calls' media through a :class:`~portshift_source_chorus.client.ChorusClient`."""

    def __init__(self, client: ChorusClient) -> None:
        self.client = client
        self.options = client.options
        #: masks of the signed links handed out per call, forgotten when its download ends
        self._links: dict[str, list[str]] = {}

    def _follow(self, resp: Response, headers: dict[str, str], cid: str = "") -> Response:
        """Follow redirects and JSON links by hand: https only, the token only to base_url's origin."""
        client = self.client
        hops = 0
        while True:
            status = resp.status_code
            ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if status in REDIRECTS:
                location = resp.headers.get("location")
                drain(resp)
                if not location:
                    raise SourceError("a redirect without a Location", operation="get media", status=status, retryable=True)
                target = _joined(resp, location)
            elif status == 200 and client.same_origin(resp.url) and ctype in ("application/json", JSONAPI):
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
                target = _joined(resp, target_raw)
            else:
                return resp
            # the joined URL is sent as it is (a long signed link is not parsed again)
            target_text = str(target)
            self._links.setdefault(cid, []).extend(mask_link(target_text))
            hops += 1
            if hops > MAX_HOPS:
                raise SourceError("too many redirects", operation="get media", location=client.location, retryable=True)
            if not target_text.startswith("https://"):  # httpx's join() gives the scheme in lower case
                raise SourceError(
                    "refusing to follow the media link: it is not https",
                    operation="get media",
                    location=client.location,
                    retryable=False,
                )
            resp = client.request(target, operation="download media", headers=headers, stream=True)

    def _missing(self, cid: str, resp: Response, body: bytes) -> None:
        """The API said this call has no media for the token (403/404): the file is missing."""
        status = resp.status_code
        text = error_text(body, status)
        message = f"call {cid}: its media answered HTTP {status} ({text}): no recording, removed, or not visible"
        if self.options.strict:
            raise SourceError(message, operation="get media", status=status, location=redact_url(str(resp.url)), retryable=False)
        raise ArtifactMissing("media_forbidden" if status == 403 else "media_not_found", message)

    def _fetch(self, cid: str, headers: dict[str, str]) -> Response:
        """A streaming response with the media bytes (or a Range of them), asking for a new link
        when the media host refuses an expired one."""
        client = self.client
        refused = 0
        while True:
            params = {"info": "true"} if self.options.media_info else None
            resp = client.request(
                client.api_url(f"/api/v1/conversations/{urllib.parse.quote(cid, safe='')}/media"),
                operation="get media",
                params=params,
                headers=headers,
                stream=True,
            )
            resp = self._follow(resp, headers, cid)
            status = resp.status_code
            if status in (200, 206):
                return resp
            api = client.same_origin(resp.url)
            body = b""
            try:
                body = resp.read()[:MAX_ERROR_BODY]
            except httpx.HTTPError:
                pass
            finally:
                resp.close()
            if api:
                if status in (403, 404):
                    self._missing(cid, resp, body)
                raise SourceError(
                    error_text(body, status),
                    operation="get media",
                    status=status,
                    location=redact_url(str(resp.url)),
                    retryable=False,
                )
            if status in (401, 403, 410):  # the media host refused the link: expired or revoked
                refused += 1
                if refused > self.options.link_refreshes:
                    raise SourceError(
                        f"call {cid}: the media host refused {refused} download links (expired?)",
                        operation="download media",
                        status=status,
                        location=client.where(resp.url, False),
                        retryable=True,
                    )
                log.info("call %s: the media link was refused (HTTP %d); asking for a new one", cid, status)
                continue
            raise SourceError(
                f"call {cid}: the media host answered HTTP {status}",
                operation="download media",
                status=status,
                location=client.where(resp.url, False),
                retryable=True,
            )

    def open(self, cid: str) -> Opened:
        """Open a call's media for reading (called again for a retry)."""
        resp = self._fetch(cid, {"Accept-Encoding": "identity"})
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
        body = MediaBody(self, cid, resp, size, etag, decoded)
        # a body sent as it is can be received straight into the core's buffers (no copy)
        readinto = body.readinto if not decoded and isinstance(resp, MediaResponse) else None
        return Opened(
            chunks=body,
            size=size,
            extension=extension_for(ctype),
            content_type=ctype,
            close=body.close,
            readinto=readinto,
            validator=etag if not decoded else None,
        )

    def open_from(self, cid: str, offset: int, validator: str | None) -> Opened:
        """A call's media from byte ``offset`` on (an upload a stopped worker left mid-file): a
        ``Range`` request with ``If-Range: <ETag>``; anything but the exact range of the same bytes
        is :class:`ResumeRefused` (the core then sends the whole recording again)."""
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={offset}-"}
        if validator:
            headers["If-Range"] = validator
        resp = self._fetch(cid, headers)
        status, etag = resp.status_code, resp.headers.get("etag")
        span = content_range(resp.headers.get("content-range", ""))
        encoded = resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
        why = None
        if status != 206:
            why = f"the media host answered HTTP {status} to a range request" + (" (it changed)" if status == 200 else "")
        elif span is None or span[0] != offset or span[1] != span[2] - 1 or encoded:
            why = "the media host sent another range than the one asked for"
        elif validator and etag and etag != validator:
            why = "the media changed since the upload began (another ETag)"
        if why is not None:
            resp.close()
            raise ResumeRefused(f"call {cid}: {why}")
        assert span is not None
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower() or None
        body = MediaBody(self, cid, resp, span[2], etag or validator, False, offset=offset)
        readinto = body.readinto if isinstance(resp, MediaResponse) else None
        return Opened(
            chunks=body,
            size=span[2],
            extension=extension_for(ctype),
            content_type=ctype,
            close=body.close,
            readinto=readinto,
            validator=etag or validator,
        )

    def _resume(self, cid: str, offset: int, size: int, etag: str | None) -> Response:
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={offset}-"}
        if etag:
            headers["If-Range"] = etag
        resp = self._fetch(cid, headers)
        ok = resp.status_code == 206
        if ok:
            ok = content_range(resp.headers.get("content-range", "")) == (offset, size - 1, size)
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


def content_range(value: str) -> tuple[int, int, int] | None:
    """``(first, last, total)`` of a ``Content-Range: bytes first-last/total`` header, else None."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        out = (int(first), int(last), int(total))
    except ValueError:
        return None
    return out if unit == "bytes" and 0 <= out[0] <= out[1] < out[2] else None


class MediaBody:
    """One call's media body, read either as chunks (iterate) or into the caller's buffers
    (:meth:`readinto`), resumed with a ``Range`` request where it broke off (up to ``retries``
    times, each wait cancellable). :meth:`close` (from any thread) ends it: a closed download is
    not resumed."""

    def __init__(
        self,
        downloader: MediaDownloader,
        cid: str,
        resp: Response,
        size: int | None,
        etag: str | None,
        decoded: bool,
        *,
        offset: int = 0,
    ):
        self._dl = downloader
        self._cid = cid
        self._resp = resp
        self._size = size
        self._etag = etag
        self._decoded = decoded
        self._offset = offset  #: where the next byte received is in the whole media
        self._closed = False
        self._done = False
        self._chunks: Iterator[bytes] | None = None
        self._left = memoryview(b"")  #: what a response without readinto sent beyond a buffer
        client = downloader.client
        self._resumes = Attempts(
            Backoff(base=client.backoff.base, cap=client.backoff.cap, attempts=downloader.options.retries + 1),
            cancel=client.cancel,
            what="waiting to resume a media download",
            sleep=client.sleep,
        )

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while True:
            try:
                if self._chunks is None:
                    read = self._resp.iter_bytes if self._decoded else self._resp.iter_raw
                    self._chunks = read(self._dl.options.chunk_size)
                piece = next(self._chunks, None)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                self._broke(e)
                continue
            if piece is None:
                self._finish()
                raise StopIteration
            self._offset += len(piece)
            return piece

    def readinto(self, buffer: memoryview) -> int:
        """The next bytes into ``buffer``; 0 at the end (httpx checks the body's length)."""
        while True:
            try:
                if isinstance(self._resp, MediaResponse):
                    n = self._resp.readinto(buffer)
                else:  # a resume answered by the API's own origin: its chunks, copied
                    if not self._left:
                        if self._chunks is None:
                            self._chunks = self._resp.iter_raw(self._dl.options.chunk_size)
                        self._left = memoryview(next(self._chunks, b""))
                    n = min(len(buffer), len(self._left))
                    buffer[:n] = self._left[:n]
                    self._left = self._left[n:]
            except (httpx.TimeoutException, httpx.TransportError) as e:
                self._broke(e)
                continue
            if not n:
                self._finish()
                return 0
            self._offset += n
            return n

    def _broke(self, error: Exception) -> None:
        """Resume after a broken receive (after a wait), or raise the retryable error."""
        broke = "timed out" if isinstance(error, httpx.TimeoutException) else type(error).__name__
        cid = self._cid
        self._resp.close()
        where = self._where()  # no URL in a local: a traceback rendered with its locals shows them
        if self._closed:
            self._finish()
            raise SourceError(
                f"call {cid}: the media download was closed",
                operation="download media",
                location=where,
                retryable=True,
            )
        options = self._dl.options
        delay = self._resumes.next_delay() if options.resume_downloads and self._size is not None else None
        if delay is None:
            self._finish()
            raise SourceError(
                f"call {cid}: the media download broke off after {self._offset} of "
                f"{self._size if self._size is not None else '?'} bytes ({broke})",
                operation="download media",
                location=where,
                retryable=True,
            )
        log.info("call %s: media download broke off at byte %d (%s); resuming in %.2fs", cid, self._offset, broke, delay)
        try:
            self._resumes.wait(delay)
            assert self._size is not None
            self._resp = self._dl._resume(cid, self._offset, self._size, self._etag)
        except BaseException:
            self._finish()
            raise
        self._chunks = None
        self._left = memoryview(b"")

    def _where(self) -> str:  # only for an error: not worth a URL parse per download
        client = self._dl.client
        return client.where(self._resp.url, client.same_origin(self._resp.url))

    def _finish(self) -> None:
        """The download ended (complete, failed or closed): release the connection, forget the link."""
        self._resp.close()
        if not self._done:
            self._done = True
            for value in self._dl._links.pop(self._cid, []):  # the link is spent: keep the mask set small
                forget_mask(value)

    def close(self) -> None:
        """End the download (from any thread: wakes a blocked receive); it is not resumed."""
        self._closed = True
        self._finish()


def _joined(resp: Response, link: str) -> httpx.URL:
    """``link`` resolved against the response's URL. The common case, an absolute https link
    without dot segments (a signed media link), is that link itself: parsed once, without
    parsing the response's URL to join it (the same URL ``join`` gives)."""
    if link[:8].lower() == "https://" and "/." not in link[8:]:
        return httpx.URL(link)
    return resp.url.join(link)
