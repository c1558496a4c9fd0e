"""The conformance kit's FaultProxy really injects the faults it promises (over TLS)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trustme

from portshift.testing import FaultProxy
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
