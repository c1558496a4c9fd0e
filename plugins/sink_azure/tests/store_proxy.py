"""A TLS-terminating HTTP/1.1 proxy in front of Azurite, for the resume tests: it counts the body
bytes of every request that reaches the store, and can hold requests (until the test releases
them, then drop the connection) so that a process killed meanwhile leaves exactly the blocks
before them staged. TLS on both sides with the test CA; 127.0.0.1 only.

(The S3 plugin's tests have a fuller one in front of moto; a shared one in portshift.testing
would serve both.)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portshift.testing import LocalCA


@dataclass
class Seen:
    method: str
    target: str  #: path and query string (the SAS is in it: never printed by the tests)
    body_len: int = 0


class StoreProxy:
    """127.0.0.1 TLS listener -> Azurite over TLS. ``hold(req)`` True: the request waits until
    :attr:`release` is set, then its connection is dropped (the request never reaches Azurite)."""

    def __init__(self, certs: LocalCA, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold: Callable[[Seen], bool] = lambda req: False
        self.release = threading.Event()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server_ctx = certs.server_context()
        self._client_ctx = ssl.create_default_context(cafile=str(certs.ca_pem))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def body_bytes(self, since: int = 0, method: str = "PUT") -> int:
        """Body bytes of the ``method`` requests forwarded to the store after the ``since``-th request."""
        with self._lock:
            return sum(r.body_len for r in self.seen[since:] if r.method == method)

    def close(self) -> None:
        self._stop = True
        self.release.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._server_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        up: ssl.SSLSocket | None = None
        try:
            up = self._client_ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", self.upstream_port)), server_hostname="127.0.0.1"
            )
            reader, up_reader = client.makefile("rb"), up.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                line, headers = head
                method, target, _ = line.split(" ", 2)
                req = Seen(method, target)
                if self.hold(req):
                    self.release.wait(300)
                    return  # dropped: the client sees the connection close
                length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                expects = [k for k in headers if k.lower() == "expect"]
                if expects:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    for k in expects:
                        del headers[k]
                body = reader.read(length) if length else b""
                req.body_len = len(body)
                with self._lock:
                    self.seen.append(req)
                out = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                up.sendall(out.encode("latin-1") + body)
                if not _relay(up_reader, client, method):
                    return
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if up is not None:
                with contextlib.suppress(OSError):
                    up.close()


def _read_head(reader: Any) -> tuple[str, dict[str, str]] | None:
    line = reader.readline()
    if not line:
        return None
    headers: dict[str, str] = {}
    while True:
        h = reader.readline().decode("latin-1").rstrip("\r\n")
        if not h:
            break
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    return line.decode("latin-1").rstrip("\r\n"), headers


def _relay(up_reader: Any, client: ssl.SSLSocket, method: str) -> bool:
    """Copy one response (interim 1xx ones skipped); False when the connection must close."""
    while True:
        head = _read_head(up_reader)
        if head is None:
            return False
        status_line, headers = head
        status = int(status_line.split(" ", 2)[1])
        if 100 <= status < 200:
            continue
        client.sendall((status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1"))
        lower = {k.lower(): v for k, v in headers.items()}
        if method == "HEAD" or status in (204, 304):
            pass
        elif "content-length" in lower:
            remaining = int(lower["content-length"])
            while remaining:
                data = up_reader.read(min(remaining, 65536))
                if not data:
                    return False
                client.sendall(data)
                remaining -= len(data)
        elif "chunked" in lower.get("transfer-encoding", "").lower():
            while True:
                size_line = up_reader.readline()
                client.sendall(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                client.sendall(up_reader.read(size + 2))
                if size == 0:
                    break
        else:
            client.sendall(up_reader.read())
            return False
        return "close" not in lower.get("connection", "").lower()
