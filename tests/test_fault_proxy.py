"""The conformance kit's FaultProxy really injects the faults it promises (over TLS)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trustme

from portshift.testing import Connection, FaultProxy, RequestMeter
from portshift.tls import https_client


class Echo(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:  # noqa: N802
        n = int(self.headers["Content-Length"])
        body = self.rfile.read(n)
        self.send_response(200 if len(body) == n else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    d = tmp_path_factory.mktemp("ca")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], str(d / "ca.pem")
    server.shutdown()


def put(port: int, ca: str, size: int) -> httpx.Response:
    with https_client(ca, timeout=3.0) as c:
        return c.put(f"https://127.0.0.1:{port}/x", content=b"x" * size)


def test_without_faults_requests_pass(tls_server: tuple[int, str]) -> None:
    port, ca = tls_server
    with FaultProxy(port) as proxy:
        assert put(proxy.port, ca, 300_000).status_code == 200
    assert proxy.connections == 1 and proxy.faults == 0


@pytest.mark.parametrize("fault", ["reset", "half-close", "stall"])
def test_each_fault_breaks_one_request_then_lets_the_next_through(tls_server: tuple[int, str], fault: str) -> None:
    port, ca = tls_server
    with FaultProxy(port, fault=fault, after_bytes=100_000, times=1, stall_seconds=5) as proxy:
        try:
            failed = put(proxy.port, ca, 300_000).status_code != 200  # a half-closed upload may get an error answer
        except (httpx.TransportError, OSError):
            failed = True
        assert failed, f"the {fault} fault did not break the request"
        assert put(proxy.port, ca, 300_000).status_code == 200
    assert proxy.faults == 1


# --- plain TCP: what the proxy does with the end of a stream, and what its hook sees ---------------
class Replier:
    """A TCP server on 127.0.0.1 that answers each connection with ``reply(received) -> bytes``
    once the client shut its write half (or after ``expect`` bytes), then closes."""

    def __init__(self, reply: Callable[[bytes], bytes], expect: list[int] | None = None) -> None:
        self.reply = reply
        self.expect = expect
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                if self.expect is None:
                    data = b""
                    while piece := conn.recv(65536):
                        data += piece
                    conn.sendall(self.reply(data))
                    continue
                for n in self.expect:  # answer each message of n bytes before reading the next
                    data = b""
                    while len(data) < n:
                        data += conn.recv(n - len(data))
                    conn.sendall(self.reply(data))

    def close(self) -> None:
        self.sock.close()


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def pipe_threads(proxy: FaultProxy) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"fault-proxy-{proxy.port}-")]


def test_a_half_close_passes_through_and_the_answer_comes_back() -> None:
    """The client sends its request and shuts its write half; the server reads to EOF and answers.
    The proxy passes the EOF on as a half-close, so the answer still reaches the client."""
    server = Replier(lambda data: b"got %d bytes" % len(data))
    try:
        with FaultProxy(server.port) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                client.sendall(b"x" * 300_000)
                client.shutdown(socket.SHUT_WR)
                assert read_to_eof(client) == b"got 300000 bytes"
            deadline = time.monotonic() + 5
            while pipe_threads(proxy) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pipe_threads(proxy) == [], "a pipe thread is still blocked after both sides ended"
    finally:
        server.close()


def test_when_the_server_closes_the_client_sees_eof_at_once() -> None:
    """The server answers and closes while the client still has its write half open: the thread
    reading the client must not stay blocked, and the client must see the end of the stream."""
    server = Replier(lambda data: b"bye", expect=[5])
    try:
        with FaultProxy(server.port) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                client.sendall(b"hello")
                started = time.monotonic()
                assert read_to_eof(client) == b"bye"  # a socket.timeout here: the EOF never came
                assert time.monotonic() - started < 2
    finally:
        server.close()


def test_the_on_bytes_hook_meters_where_each_request_ends() -> None:
    server = Replier(lambda data: b"ok", expect=[1000, 500])
    meter = RequestMeter()
    seen: list[tuple[int, bool, int]] = []

    def hook(conn: Connection, upstream: bool, data: bytes) -> None:
        meter(conn, upstream, data)
        seen.append((conn.number, upstream, len(data)))

    try:
        with FaultProxy(server.port, on_bytes=hook) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                for size in (1000, 500):
                    client.sendall(b"y" * size)
                    assert client.recv(2) == b"ok"
    finally:
        server.close()
    assert meter.marks == [[1000, 1500]]
    assert sum(n for _, up, n in seen if up) == 1500 and sum(n for _, up, n in seen if not up) == 4
