"""Requests to the media host, read with the standard library's ``http.client``.

A media link's body is the bulk of an export's bytes. httpx reads a body through h11, httpcore
and its own generator layers one TLS record (at most 16 KiB) at a time, and then copies the
records into the chunk size asked for; ``http.client``'s buffered reader fills a whole chunk in C.
On a 1 GiB download that is about 1 CPU-second less (``benchmarks/perf-findings.md``, F3).

Only requests that leave ``base_url``'s origin come here, and they never carry the token (the
client adds it only for its own origin, and :meth:`MediaConnections.get` drops any
``Authorization`` header regardless). The URL was checked to be https before (and is checked
again here); the SSL context is :func:`portshift.tls.ssl_context` (TLS 1.2+, certificate and host
name checked, trust from ``ca_bundle`` and the system store only); proxies and CA variables from
the environment are ignored, as in the httpx client; the connect timeout covers TCP and the TLS
handshake, and the read timeout every later receive. Redirects are not followed here:
:class:`~portshift_source_chorus.client.ChorusClient` follows them by hand.

Failures are raised as the httpx exceptions httpcore raises for the same events
(:class:`httpx.ConnectError`, :class:`httpx.ReadTimeout`, :class:`httpx.RemoteProtocolError`
for a body shorter than its ``Content-Length``, ...) with the OS or SSL error as their cause and
no URL in their text, so that the client's retries, Range resumes and TLS-failure reporting
treat both paths alike.

Connections are kept for reuse when a body was read to its end (as httpx's pool does), so many
small downloads from one media host do not each pay for a TLS handshake. A kept connection the
server has closed in the meantime is replaced once, silently (a GET is safe to send again).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator

import httpx

from portshift import __version__

from .fast_headers import FastResponse, ResponseHeaders

DEFAULT_READ = 1024 * 1024
USER_AGENT = f"portshift/{__version__}"


class MediaResponse:
    """A media host's answer: the part of :class:`httpx.Response` the Chorus client uses."""

    def __init__(
        self,
        pool: MediaConnections,
        key: tuple[str, int],
        conn: http.client.HTTPSConnection,
        sock: socket.socket,
        raw: http.client.HTTPResponse,
        url: httpx.URL | str,
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._sock = sock
        self._raw = raw
        self._url = url  #: parsed when first asked for (an API answer's URL is needed only on an error)
        self.status_code: int = raw.status
        headers = raw.headers
        self.headers = headers if isinstance(headers, ResponseHeaders) else ResponseHeaders(raw.getheaders())
        length = self.headers.get("content-length")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._length = int(length) if length is not None and length.isdigit() and not chunked else None
        self._received = 0
        self._complete = False  #: the body was read to its end
        self._drained = False  #: http.client's buffer holds no more body bytes (readinto)
        self._failed: BaseException | None = None  #: raised by the next readinto (after bytes it returned)
        self._closed = False
        self.content = b""  #: the body, once :meth:`read`

    @property
    def url(self) -> httpx.URL:
        if isinstance(self._url, str):
            self._url = httpx.URL(self._url)
        return self._url

    # --- the body ---------------------------------------------------------------------------
    def _read(self, amt: int) -> bytes:
        if self._complete:
            return b""
        data = self._receive(self._raw.read, amt)
        if data:
            self._received += len(data)
            return data
        self._ended()
        return b""

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next body bytes (no copy), fewer only at the end of the body;
        0 at the end. An error after some bytes arrived is raised by the next call, so those bytes
        count (a resume starts after them). Only for a body without a ``Content-Encoding``: use
        :meth:`iter_bytes` for the others.

        A body of known length is received straight from the TLS connection once ``http.client``'s
        buffer is drained, in a loop in this one frame: one C call per TLS record (at most 16 KiB)
        instead of three Python frames each (``SocketIO.readinto``, ``SSLSocket.recv_into``,
        ``SSLSocket.read``). The receiving thread then holds the GIL a fraction of the time, which
        is what lets it run beside the hashing and writing threads on a busy machine. The
        connection is not reused afterwards (http.client did not see the body)."""
        if self._complete:
            return 0
        if self._failed is not None:
            error, self._failed = self._failed, None
            raise error
        if self._closed:
            raise httpx.ReadError("the download was closed")
        raw = self._raw
        length = self._length
        want = len(buffer) if length is None else min(len(buffer), length - self._received)
        got = 0
        try:
            if length is None or raw.chunked or raw.fp is None:
                got = raw.readinto(buffer)  # http.client's buffered reader fills it in C
            else:
                if not self._drained:
                    got = self._drain(buffer[:want])
                sslobj = getattr(self._sock, "_sslobj", None) if self._drained else None
                if sslobj is None:
                    while got < want and (n := raw.readinto(buffer[got:want])):
                        got += n
                else:
                    read = sslobj.read  # what SSLSocket.recv_into calls, for the same socket
                    while got < want and (n := read(want - got, buffer[got:])):
                        got += n
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            pass  # the peer closed the connection: a short body is reported by the length check
        except BaseException as e:
            error = self._mapped(e)
            if error is e:
                raise  # not a receive error (an interrupt): at once
            if not got:
                raise error from e
            error.__cause__ = e
            self._failed = error
        if got:
            self._received += got
            return got
        if self._closed:
            raise httpx.ReadError("the download was closed")
        self._ended()
        return 0

    def _drain(self, buffer: memoryview) -> int:
        """What http.client read beyond the headers (or one more record), from its buffer."""
        fp = self._raw.fp
        assert fp is not None
        have = len(fp.peek())
        got: int = fp.readinto(buffer[: min(have, len(buffer))])
        self._drained = got == have
        return got

    def _receive(self, read: Callable[[int], bytes], amt: int) -> bytes:
        if self._closed:
            raise httpx.ReadError("the download was closed")
        try:
            return read(amt)
        except BaseException as e:
            error = self._mapped(e)
            if error is e:
                raise
            raise error from e

    def _mapped(self, e: BaseException) -> BaseException:
        """An OS, TLS or http.client error as the httpx error httpcore raises for the same event."""
        if isinstance(e, TimeoutError):
            return httpx.ReadTimeout("timed out receiving from the media host")
        if isinstance(e, http.client.IncompleteRead):
            return httpx.RemoteProtocolError("the media host ended a chunked body early")
        if isinstance(e, (OSError, http.client.HTTPException, ValueError)):
            if self._closed:
                return httpx.ReadError("the download was closed")
            return httpx.ReadError(f"receiving from the media host failed ({type(e).__name__})")
        return e

    def _ended(self) -> None:
        if self._length is not None and self._received < self._length:
            raise httpx.RemoteProtocolError(
                f"the media host closed the connection after {self._received} of {self._length} body bytes"
            )
        self._complete = True

    def iter_raw(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body as sent, in pieces of ``chunk_size`` bytes (the last one shorter)."""
        size = chunk_size or DEFAULT_READ
        while True:
            data = self._read(size)
            if not data:
                return
            yield data

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body with its ``Content-Encoding`` (gzip, deflate) undone."""
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            yield from self.iter_raw(chunk_size)
            return
        if encoding in ("gzip", "x-gzip"):
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            inflate = None  # zlib-wrapped or raw: decided on the first bytes
        else:
            raise httpx.DecodingError(f"the media host sent Content-Encoding {encoding[:40]!r}, which cannot be decoded")
        for data in self.iter_raw(chunk_size):
            if inflate is None:
                inflate = zlib.decompressobj(zlib.MAX_WBITS if (data[0] & 0x0F) == 8 else -zlib.MAX_WBITS)
            try:
                out = inflate.decompress(data)
            except zlib.error as e:
                raise httpx.DecodingError("the media body does not decode") from e
            if out:
                yield out
        if inflate is not None:
            tail = inflate.flush()
            if tail:
                yield tail
            if not inflate.eof:
                raise httpx.DecodingError("the compressed media body ended early")

    def read(self) -> bytes:
        """The whole body, decoded, also kept as :attr:`content` (small answers: API documents,
        redirects, errors)."""
        self.content = b"".join(self.iter_bytes())
        return self.content

    def close(self) -> None:
        """Release the connection: kept for reuse when the body was read to its end, otherwise
        shut down at once (which also wakes a thread blocked receiving from it)."""
        if self._closed:
            return
        self._closed = True
        if self._complete and self._raw.isclosed():
            self._pool._release(self._key, self._conn)
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._raw.close()
        self._conn.close()
        self._sock.close()


class MediaConnections:
    """HTTPS connections to media hosts, kept for reuse. Thread-safe."""

    #: request headers never sent (the token goes only to the API: :class:`ApiConnections`)
    DROP: tuple[str, ...] = ("authorization", "host", "cookie")
    #: sent unless the caller says otherwise (the API's: what httpx offers, answers decoded by ``read``)
    DEFAULTS: dict[str, str] = {"User-Agent": USER_AGENT, "Accept": "*/*"}

    def __init__(
        self, context: ssl.SSLContext, *, connect_timeout: float, read_timeout: float, max_idle_per_host: int = 8
    ) -> None:
        self._ctx = context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[http.client.HTTPSConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self, host: str, port: int) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._ctx)
        conn.response_class = FastResponse  # headers read without the email package
        try:
            conn.connect()  # TCP and the TLS handshake, within the connect timeout
        except TimeoutError as e:
            conn.close()
            raise httpx.ConnectTimeout("timed out connecting to the media host") from e
        except OSError as e:  # ssl.SSLError (a certificate, the handshake) is an OSError
            conn.close()
            raise httpx.ConnectError(f"could not connect to the media host ({type(e).__name__})") from e
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        return conn

    def _take(self, key: tuple[str, int]) -> http.client.HTTPSConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _release(self, key: tuple[str, int], conn: http.client.HTTPSConnection) -> None:
        if conn.sock is not None:  # None: the server said Connection: close
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if not self._closed and len(idle) < self._max_idle:
                    idle.append(conn)
                    return
        conn.close()

    def get(self, url: httpx.URL, headers: dict[str, str]) -> MediaResponse:
        """Send ``GET url`` and read the status line and headers; the body is left to the caller."""
        if url.scheme != "https":
            raise httpx.UnsupportedProtocol("refusing to send a request that is not https")
        host = url.host
        port = url.port or 443
        key = (host, port)
        self._allowed(key)
        target = url.raw_path.decode("ascii") or "/"
        return self._send(key, target, headers, url)

    def _send(self, key: tuple[str, int], target: str, headers: dict[str, str], url: httpx.URL | str) -> MediaResponse:
        host, port = key
        hdrs = dict(self.DEFAULTS)
        hdrs.update({k: v for k, v in headers.items() if k.lower() not in self.DROP})
        for attempt in (1, 2):
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(host, port)
            sock = conn.sock
            assert sock is not None
            try:
                conn.request("GET", target, headers=hdrs)
                raw = conn.getresponse()
            except TimeoutError as e:
                conn.close()
                raise httpx.ReadTimeout("timed out waiting for the media host's answer") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and attempt == 1:
                    continue  # a kept connection the server had closed: once more on a new one
                if isinstance(e, http.client.HTTPException) and not isinstance(e, ConnectionError):
                    raise httpx.RemoteProtocolError(f"the media host's answer is not HTTP ({type(e).__name__})") from e
                raise httpx.ReadError(f"the media host dropped the connection ({type(e).__name__})") from e
            return MediaResponse(self, key, conn, sock, raw, url)
        raise AssertionError("unreachable")  # pragma: no cover

    def _allowed(self, key: tuple[str, int]) -> None:
        """Any host (a media link may point anywhere https); :class:`ApiConnections`: one origin."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


class ApiConnections(MediaConnections):
    """Connections to the API's own origin (``base_url``) for its small GETs (a conversation, the
    media request that answers with a redirect): the same path as the media host's, without
    httpx's per-request layers. The ``Authorization`` header is sent, so these connections refuse
    any other host and port than the one they were made for."""

    DROP = ("host", "cookie")
    DEFAULTS = {**MediaConnections.DEFAULTS, "Accept-Encoding": "gzip, deflate"}

    def __init__(self, context: ssl.SSLContext, origin: tuple[str, int], *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(context, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._origin = origin

    def _allowed(self, key: tuple[str, int]) -> None:
        if key != self._origin:
            raise httpx.UnsupportedProtocol("refusing to send the API's credentials to another origin")

    def get_path(self, target: str, url: str, headers: dict[str, str]) -> MediaResponse:
        """``GET target`` (the path and query, as sent) on the origin: ``url`` is the whole URL
        the caller built from ``base_url`` (parsed only if the answer's ``url`` is asked for)."""
        return self._send(self._origin, target, headers, url)
