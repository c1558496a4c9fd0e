"""Shared fixtures of the core tests: a throw-away CA, real TLS and plain listeners on 127.0.0.1,
canaries, and a guard that puts the logging configuration back after a test changes it.

Nothing here is autouse: a test asks for what it needs.
"""

from __future__ import annotations

import http.server
import logging
import secrets
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from .pg_server import PgServer

if TYPE_CHECKING:
    from portshift.state import State


def make_canary(tag: str = "") -> str:
    """A unique, greppable secret stand-in (long enough for every mask variant)."""
    return f"CANARY{tag}-{secrets.token_hex(8)}"


@pytest.fixture
def canary() -> str:
    return make_canary()


# --- certificates ------------------------------------------------------------------------------
@dataclass
class TLSMaterial:
    ca: trustme.CA
    cert: trustme.LeafCert
    ca_pem: Path  #: the CA certificate, to pass as ca_bundle


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return TLSMaterial(ca=ca, cert=cert, ca_pem=pem)


def server_context(material: TLSMaterial, *, tls11_only: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls11_only:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    material.cert.configure_cert(ctx)
    return ctx


# --- a plain TCP listener that counts connections (what would cross the wire in clear) ----------
class PlainListener:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="plain-listener", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return "http" + f"://127.0.0.1:{self.port}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.5)
                try:
                    self.received += conn.recv(65536)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    listener = PlainListener()
    try:
        yield listener
    finally:
        listener.close()


# --- a real HTTPS server on 127.0.0.1 -----------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        parts = urllib.parse.urlsplit(self.path)
        self.server.paths.append(parts.path)  # type: ignore[attr-defined]
        if parts.path == "/redirect":
            target = urllib.parse.parse_qs(parts.query)["to"][0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"hello over tls"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ctx = ctx
        self.paths: list[str] = []
        self.versions: list[str] = []
        self.handshake_failures = 0

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        request.settimeout(5)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            return
        try:
            self.versions.append(str(tls.version()))
            self.RequestHandlerClass(tls, client_address, self)
        except OSError:
            pass
        finally:
            tls.close()

    def handle_error(self, request: object, client_address: object) -> None:
        return


@dataclass
class HTTPSServer:
    server: _TLSServer
    thread: threading.Thread
    port: int
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def https_server_factory(tls_material: TLSMaterial) -> Iterator[Callable[..., HTTPSServer]]:
    started: list[HTTPSServer] = []

    def start(*, tls11_only: bool = False) -> HTTPSServer:
        srv = _TLSServer(server_context(tls_material, tls11_only=tls11_only))
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        h = HTTPSServer(server=srv, thread=thread, port=srv.server_address[1], paths=srv.paths)
        started.append(h)
        return h

    try:
        yield start
    finally:
        for h in started:
            h.close()


@pytest.fixture
def https_server(https_server_factory: Callable[..., HTTPSServer]) -> HTTPSServer:
    return https_server_factory()


# --- logging guard ----------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging(): root handlers and level, every named logger's level."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    raise_exc = logging.raiseExceptions
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        logging.raiseExceptions = raise_exc
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


# --- the job state on both backends ------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server(tls_material: TLSMaterial) -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (see tests/pg_server.py)."""
    from .pg_server import start_server

    server = start_server(tls_material.ca, tls_material.ca_pem)
    try:
        yield server
    finally:
        server.cleanup()


@dataclass
class StateBackend:
    """Where a test keeps its job state: a SQLite file or a fresh PostgreSQL database."""

    kind: str  #: "sqlite" or "postgres"
    target: str  #: a path, or a URL (no password; the test CA as sslrootcert=)
    password: str | None = None
    server: PgServer | None = None
    dbname: str = ""

    def open(self, create: bool = True) -> State:
        from portshift.secrets import Secret
        from portshift.state import open_state

        return open_state(self.target, create=create, password=Secret(self.password, "password") if self.password else None)

    def env(self) -> dict[str, str]:
        """What a `portshift` subprocess needs besides `--state TARGET`."""
        return {"PORTSHIFT_STATE_PASSWORD": self.password} if self.password else {}

    def __str__(self) -> str:
        return self.target


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StateBackend:
    """The same test against both backends: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StateBackend("sqlite", str(tmp_path / "state.db"))
    server: PgServer = request.getfixturevalue("pg_server")
    db = server.new_database()
    return StateBackend("postgres", server.url(db), server.password, server, db)
