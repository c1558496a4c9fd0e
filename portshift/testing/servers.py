"""Real listeners on 127.0.0.1 for tests: a throw-away CA, a small TLS server that counts
handshakes and answers HTTP requests, a plain TCP listener that must stay unused, and helpers to
start and stop server processes.

``trustme`` (a test dependency) is imported only when a :class:`LocalCA` is made.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server started as a process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int,
    proc: subprocess.Popen[Any] | None = None,
    *,
    what: str = "the server",
    log: Path | None = None,
    timeout: float = 30.0,
) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; fail at once when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start within {timeout:g} s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the process."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class LocalCA:
    """A throw-away certificate authority and a server certificate for ``127.0.0.1``/``localhost``,
    written as PEM files in ``dir``. Pass ``ca_pem`` to the plugin as its ``ca_bundle``; give
    ``cert_pem``/``key_pem`` to a server process, or :meth:`server_context` to an in-process one."""

    ca: Any = field(repr=False)  #: the ``trustme.CA``
    dir: Path
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    @classmethod
    def create(cls, folder: Path) -> LocalCA:
        import trustme

        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(folder / "server.key"))
        cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(folder / "server.pem"), append=True)
        return cls(ca, folder, folder / "ca.pem", folder / "server.pem", folder / "server.key")

    def server_context(self, *hosts: str, tls11_only: bool = False) -> ssl.SSLContext:
        """A server-side context with a certificate for ``hosts`` (default ``127.0.0.1`` and
        ``localhost``); ``tls11_only`` makes a server no portshift client may talk to."""
        return server_context(self.ca, *hosts, tls11_only=tls11_only)

    def other_ca_pem(self) -> Path:
        """The certificate of a second, unrelated CA (trust that must not help)."""
        import trustme

        path = self.dir / "other-ca.pem"
        if not path.exists():
            trustme.CA().cert_pem.write_to_path(str(path))
        return path


def server_context(ca: Any, *hosts: str, tls11_only: bool = False) -> ssl.SSLContext:
    """A server-side context with a certificate issued by ``ca`` (a ``trustme.CA``) for ``hosts``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls11_only:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    ca.issue_cert(*(hosts or ("127.0.0.1", "localhost"))).configure_cert(ctx)
    return ctx


def http_response(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None, reason: str = "") -> bytes:
    """The raw bytes of one HTTP/1.1 response (with ``Content-Length`` and ``Connection: close``)."""
    head = f"HTTP/1.1 {status} {reason or 'Answer'}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1") + body


@dataclass
class Request:
    """One HTTP request a :class:`TLSServer` received."""

    method: str
    target: str  #: path and query, as sent
    headers: dict[str, str]  #: names in lower case
    body: bytes
    head: bytes  #: the raw request line and headers

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _Listener:
    """A socket listening on 127.0.0.1 and a thread that hands each connection to ``_handle``."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:  # pragma: no cover - each listener has its own
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


_L = TypeVar("_L", bound=_Listener)


class TLSServer(_Listener):
    """A TLS server on 127.0.0.1 that counts handshakes (good and failed) and answers one HTTP
    request per connection with ``respond(request) -> bytes`` (raw response bytes, see
    :func:`http_response`), or with fixed bytes. ``requests`` keeps what arrived."""

    def __init__(self, context: ssl.SSLContext, respond: Callable[[Request], bytes] | bytes = b"") -> None:
        self.context = context
        answer = respond if isinstance(respond, bytes) and respond else http_response()
        self.respond: Callable[[Request], bytes] = respond if callable(respond) else (lambda req: answer)
        self.handshakes = 0
        self.failed_handshakes = 0
        self.versions: list[str] = []
        self.requests: list[Request] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _handle(self, raw: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            with contextlib.suppress(OSError):
                raw.close()
            return
        self.handshakes += 1
        self.versions.append(str(conn.version()))
        try:
            request = _read_request(conn)
            if request is not None:
                self.requests.append(request)
                conn.sendall(self.respond(request))
        except (ssl.SSLError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def wait_for(self, what: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``what()`` until it is true or ``timeout`` seconds passed; its last value."""
        deadline = time.monotonic() + timeout
        while not what() and time.monotonic() < deadline:
            time.sleep(0.01)
        return what()


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target = (lines[0].split(" ") + ["", ""])[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return Request(method, target, headers, body, head)


class PlainListener(_Listener):
    """A plain-TCP listener on 127.0.0.1 that counts connections and keeps what arrived: what
    would have crossed the wire in clear. Both must stay empty in a test of TLS refusals."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        super().__init__()

    @property
    def url(self) -> str:
        return "http" + f"://127.0.0.1:{self.port}"  # split: no plain-HTTP literal in the tree

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                self.received += conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
