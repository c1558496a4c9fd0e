"""The media host's bodies are read with http.client (media.py): a stall longer than read_timeout
mid-body is resumed with a Range request, a compressed body is decoded, connections are reused
and a kept connection the server has dropped is replaced silently, an untrusted media host is a
TLS error that is not retried, and the media host never sees the token. The simulator's API
hands out links that point at a media server of this file, built on the simulator's own
certificate (so the ca_bundle the source trusts covers it)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from portshift_source_chorus.simulator import ChorusSimulator, MediaConfig

from portshift.errors import SourceError

from .conftest import CANARY, WINDOW, make_source


class MediaServer(http.server.ThreadingHTTPServer):
    """HTTP/1.1 with keep-alive over TLS; serves the tenant's media at /media/{id}."""

    daemon_threads = True

    def __init__(self, sim: ChorusSimulator, ctx: ssl.SSLContext) -> None:
        self.sim = sim
        self.ctx = ctx
        self.mode = "plain"  # plain | gzip | stall | drop (close each connection after one answer, silently)
        self.stall_seconds = 1.0
        self.connections = 0
        self.requests: list[dict[str, str]] = []  # headers of each request
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _MediaHandler)
        self._t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._t.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.lock:
            self.connections += 1
        try:
            _MediaHandler(tls, client_address, self)
        except OSError:
            pass
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        return

    def rewrite(self, link: str) -> str:
        return link.replace(f":{self.sim.media_port}/", f":{self.server_address[1]}/")

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _MediaHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MediaServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests.append({k.lower(): v for k, v in self.headers.items()})
        cid = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        data = b"".join(srv.sim.tenant.media_chunks(cid))
        rng = self.headers.get("Range")
        if srv.mode == "gzip":
            body = gzip.compress(data)
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif rng:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            self.send_response(206)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
        else:
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if srv.mode == "stall":
                half = len(data) // 2
                self.wfile.write(data[:half])
                self.wfile.flush()
                time.sleep(srv.stall_seconds)  # silent, longer than the client's read timeout
                self.close_connection = True
                return
            self.wfile.write(data)
        if srv.mode == "drop":
            self.close_connection = True  # without saying so: the client keeps the connection


@pytest.fixture
def media_server(sim: ChorusSimulator) -> Iterator[MediaServer]:
    assert sim.certs is not None
    server = MediaServer(sim, sim.certs.server_context())
    sim.configure(media=MediaConfig(rewrite_link=server.rewrite))
    yield server
    server.close()


def _calls(sim: ChorusSimulator, source: Any, n: int, min_size: int = 1) -> list[Any]:
    recs = [
        r
        for r in source.recordings(WINDOW)
        if r.skipped is None and not sim.tenant.by_id[r.id].hidden and sim.tenant.media_size(r.id) >= min_size
    ]
    assert len(recs) >= n
    return recs[:n]


def _download(source: Any, rec: Any) -> tuple[bytes, Any]:
    (media,) = source.artifacts(rec)
    opened = media.open()
    try:
        return b"".join(opened.chunks), opened
    finally:
        opened.close()


def test_a_stall_longer_than_read_timeout_is_resumed_with_a_range_request(
    sim: ChorusSimulator, media_server: MediaServer
) -> None:
    media_server.mode = "stall"
    source = make_source(sim, artifacts=["media"], read_timeout=0.3, chunk_size=16384)
    (rec,) = _calls(sim, source, 1, min_size=100_000)
    data, opened = _download(source, rec)
    assert hashlib.sha256(data).hexdigest() == sim.tenant.media_sha256(rec.id)
    size = sim.tenant.media_size(rec.id)
    assert opened.size == size
    # resumed where the chunks handed over ended (a chunk being filled when the stall hit is
    # fetched again, as with httpx's chunker)
    ranges = [r.get("range") for r in media_server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={(size // 2) // 16384 * 16384}-", ranges
    assert source.client.sleep.delays, "the resume did not back off"  # type: ignore[attr-defined]
    source.close()


def test_read_into_buffers_a_stall_is_resumed_at_the_byte_it_stopped_at(sim: ChorusSimulator, media_server: MediaServer) -> None:
    """The path the core takes for a large download: straight from the TLS connection into the
    caller's buffer, a stall is a read timeout, resumed with a Range request from the last byte
    received (nothing fetched twice), the connection of the broken download not reused."""
    media_server.mode = "stall"
    source = make_source(sim, artifacts=["media"], read_timeout=0.3)
    (rec,) = _calls(sim, source, 1, min_size=100_000)
    (media,) = source.artifacts(rec)
    opened = media.open()
    assert opened.readinto is not None
    buf = memoryview(bytearray(40_000))
    h = hashlib.sha256()
    total = 0
    try:
        while n := opened.readinto(buf):
            h.update(buf[:n])
            total += n
    finally:
        if opened.close:
            opened.close()
    size = sim.tenant.media_size(rec.id)
    assert total == size and h.hexdigest() == sim.tenant.media_sha256(rec.id)
    ranges = [r.get("range") for r in media_server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2}-", ranges
    assert media_server.connections == 2
    source.close()


def test_a_compressed_body_is_decoded_and_has_no_declared_size(sim: ChorusSimulator, media_server: MediaServer) -> None:
    media_server.mode = "gzip"
    source = make_source(sim, artifacts=["media"])
    for rec in _calls(sim, source, 3, min_size=1000):
        data, opened = _download(source, rec)
        assert hashlib.sha256(data).hexdigest() == sim.tenant.media_sha256(rec.id)
        assert opened.size is None and opened.extension == "mp3"
    source.close()


def test_connections_to_the_media_host_are_reused(sim: ChorusSimulator, media_server: MediaServer) -> None:
    source = make_source(sim, artifacts=["media"])
    recs = _calls(sim, source, 8)
    for rec in recs:
        data, _ = _download(source, rec)
        assert hashlib.sha256(data).hexdigest() == sim.tenant.media_sha256(rec.id)
    assert len(media_server.requests) == 8
    assert media_server.connections == 1
    source.close()


def test_a_kept_connection_the_server_dropped_is_replaced_silently(sim: ChorusSimulator, media_server: MediaServer) -> None:
    media_server.mode = "drop"
    source = make_source(sim, artifacts=["media"], retries=0)
    recs = _calls(sim, source, 4)
    for rec in recs:
        time.sleep(0.05)  # the server has closed the kept connection by now
        data, _ = _download(source, rec)
        assert hashlib.sha256(data).hexdigest() == sim.tenant.media_sha256(rec.id)
    assert media_server.connections == 4
    assert source.client.sleep.delays == []  # type: ignore[attr-defined]  # no retry was needed
    source.close()


def test_the_media_host_never_sees_the_token_or_a_cookie(sim: ChorusSimulator, media_server: MediaServer) -> None:
    source = make_source(sim, artifacts=["media"])
    for rec in _calls(sim, source, 3):
        _download(source, rec)
    assert media_server.requests
    for headers in media_server.requests:
        assert "authorization" not in headers and "cookie" not in headers
        assert CANARY not in repr(headers)
        assert headers["accept-encoding"] == "identity"
    source.close()


def test_an_untrusted_media_host_is_a_tls_error_that_is_not_retried(sim: ChorusSimulator) -> None:
    other = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.issue_cert("127.0.0.1").configure_cert(ctx)
    server = MediaServer(sim, ctx)
    sim.configure(media=MediaConfig(rewrite_link=server.rewrite))
    try:
        source = make_source(sim, artifacts=["media"], retries=3)
        (rec,) = _calls(sim, source, 1)
        (media,) = source.artifacts(rec)
        with pytest.raises(SourceError) as e:
            media.open()
        assert "certificate verification failed" in str(e.value) and e.value.retryable is False
        assert "?" not in str(e.value) and "sig=" not in str(e.value)
        assert server.requests == [] and server.connections == 0
        assert source.client.sleep.delays == []  # type: ignore[attr-defined]
        source.close()
    finally:
        server.close()


def test_closing_a_download_from_another_thread_wakes_a_blocked_receive(sim: ChorusSimulator, media_server: MediaServer) -> None:
    """What the core's read-ahead relies on: close() ends a receive waiting on a silent server
    at once (not at the read timeout), and the download is not resumed afterwards."""
    media_server.mode = "stall"
    media_server.stall_seconds = 5.0
    source = make_source(sim, artifacts=["media"], read_timeout=30)
    (rec,) = _calls(sim, source, 1, min_size=100_000)
    (media,) = source.artifacts(rec)
    opened = media.open()
    got: dict[str, Any] = {}

    def reader() -> None:
        n = 0
        try:
            for piece in opened.chunks:
                n += len(piece)
        except BaseException as e:  # noqa: BLE001
            got["error"] = e
        got["bytes"] = n

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.5)  # the reader now waits for the second half
    t0 = time.monotonic()
    opened.close()
    t.join(3)
    assert not t.is_alive(), "close() did not wake the receive"
    assert time.monotonic() - t0 < 2
    assert isinstance(got.get("error"), SourceError) and "closed" in str(got["error"])
    assert got["bytes"] < sim.tenant.media_size(rec.id)
    assert all(r.get("range") is None for r in media_server.requests), "a closed download was resumed"
    source.close()


def test_a_request_is_refused_unless_https() -> None:
    import httpx
    from portshift_source_chorus.media import MediaConnections

    pool = MediaConnections(ssl.create_default_context(), connect_timeout=1, read_timeout=1)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(httpx.UnsupportedProtocol):
            pool.get(httpx.URL("http" + f"://127.0.0.1:{listener.getsockname()[1]}/x"), {})
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing connected
    finally:
        listener.close()
        pool.close()


def test_the_api_connections_carry_the_token_to_their_origin_only() -> None:
    """The API's own connections send ``Authorization`` (the media host's drop it), so they
    refuse any other host or port before connecting."""
    import httpx
    from portshift_source_chorus.media import ApiConnections, MediaConnections

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pool = ApiConnections(ssl.create_default_context(), ("127.0.0.1", port + 1), connect_timeout=1, read_timeout=1)
    try:
        for url in (f"https://127.0.0.1:{port}/x", f"https://localhost:{port + 1}/x"):
            with pytest.raises(httpx.UnsupportedProtocol, match="another origin"):
                pool.get(httpx.URL(url), {"Authorization": "t0ken"})
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing connected
    finally:
        listener.close()
        pool.close()
    assert "authorization" in MediaConnections.DROP and "authorization" not in ApiConnections.DROP


def test_the_api_connections_offer_gzip_as_httpx_did_and_read_the_answer_decoded() -> None:
    """A real HTTPS server on 127.0.0.1 that compresses when asked: the API's connections ask (as
    httpx's client did), ``read()`` gives the document decoded, and the token reaches it."""
    import gzip
    import http.server

    import httpx
    from portshift_source_chorus.media import ApiConnections
    from portshift_source_chorus.simulator.certs import make_certs

    doc = b'{"data": {"id": "x", "text": "' + b"words " * 2000 + b'"}}'
    seen: dict[str, str | None] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            seen["accept-encoding"] = self.headers.get("Accept-Encoding")
            seen["authorization"] = self.headers.get("Authorization")
            body = gzip.compress(doc) if "gzip" in (seen["accept-encoding"] or "") else doc
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if body is not doc:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    certs = make_certs()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = certs.server_context().wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = ssl.create_default_context(cadata=certs.ca_pem.decode())
    pool = ApiConnections(ctx, ("127.0.0.1", port), connect_timeout=5, read_timeout=5)
    try:
        url = f"https://127.0.0.1:{port}/api/v1/conversations/x"
        resp = pool.get_path("/api/v1/conversations/x", url, {"Authorization": "t0ken"})
        assert resp.read() == doc and resp.content == doc and resp.status_code == 200
        assert resp.url == httpx.URL(url)
        resp.close()
        assert seen == {"accept-encoding": "gzip, deflate", "authorization": "t0ken"}
        resp = pool.get_path("/api/v1/conversations/x", url, {"Authorization": "t0ken", "Accept-Encoding": "identity"})
        assert resp.read() == doc and seen["accept-encoding"] == "identity"  # the caller's choice wins
        resp.close()
    finally:
        pool.close()
        server.shutdown()
        server.server_close()
