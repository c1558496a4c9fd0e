"""The simulator's HTTPS plumbing: a threading server that does the TLS handshake per connection
in its worker thread, a quiet request handler, and the JSON:API error shape."""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import ChorusSimulator


class Abort(Exception):
    """Stop handling this connection (after a deliberate reset or truncation)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ChorusSimulator/1"
    sys_version = ""
    timeout = 30
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def handle(self) -> None:
        try:
            super().handle()
        except (Abort, OSError, ssl.SSLError):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError, ssl.SSLError):
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.sim._dispatch(self, self.server.role)

    def _write(self) -> None:
        self.server.sim._refuse_write(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = _write  # noqa: N815 - stdlib naming


#: seconds an accept() of the listening socket may block (see Server.__init__)
ACCEPT_TIMEOUT = 1.0


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sim: ChorusSimulator, role: str, ctx: ssl.SSLContext) -> None:
        self.sim = sim
        self.role = role
        self.ctx = ctx
        super().__init__(addr, Handler)
        # serve_forever accepts only when the listening socket is ready, but a connection can be
        # gone again before accept() takes it: without a timeout that accept() would block for
        # ever, and shutdown() (which waits for the loop) with it
        self.socket.settimeout(ACCEPT_TIMEOUT)

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
        except (OSError, ssl.SSLError, Abort):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # never print tracebacks (or request data) to stderr


def error(status: int, title: str, detail: str, code: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"status": str(status), "title": title, "detail": detail}
    if code:
        err["code"] = code
    return {"errors": [err]}


def parse_date(value: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt
