"""How the simulator answers: JSON bodies, streamed bodies with a deliberate reset or truncation
half-way (the ``reset``/``truncate`` faults), S3-style XML errors from the media host."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

from .config import Fault, Faults, Stats
from .https_server import Abort, Handler


class Replies:
    """Mixed into :class:`~.server.ChorusSimulator`."""

    stats: Stats
    faults: Faults

    def _hits(self, name: str, fault: Fault | None, target: str, resource: str) -> bool:
        raise NotImplementedError

    def _status(self, server: str, status: int) -> None:
        with self.stats.lock:
            self.stats.statuses[f"{server}:{status}"] += 1
            if status == 429:
                self.stats.throttled += 1

    # --- responses -----------------------------------------------------------------------------
    def _send_json(
        self,
        h: Handler,
        status: int,
        doc: Any,
        *,
        headers: dict[str, str] | None = None,
        jsonapi: bool = False,
        target: str | None = None,
        resource: str | None = None,
        body: bytes | None = None,
        server: str = "api",
    ) -> None:
        data = body if body is not None else json.dumps(doc, ensure_ascii=False).encode()
        ctype = "application/vnd.api+json" if jsonapi else "application/json"
        self._send(h, status, {"Content-Type": ctype, **(headers or {})}, [data], len(data), target, resource, server)

    def _send(
        self,
        h: Handler,
        status: int,
        headers: dict[str, str],
        chunks: Iterable[bytes],
        length: int,
        target: str | None,
        resource: str | None,
        server: str,
    ) -> None:
        self._status(server, status)
        cut: int | None = None
        how = ""
        if target is not None and resource is not None and length > 1:
            if self._hits("reset", self.faults.reset, target, resource):
                cut, how = length // 2, "reset"
            elif self._hits("truncate", self.faults.truncate, target, resource):
                cut, how = length // 2, "truncate"
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        sent = 0
        for piece in chunks:
            if cut is not None and sent + len(piece) >= cut:
                piece = piece[: cut - sent]
                h.wfile.write(piece)
                sent += len(piece)
                self._break(h, how)
            h.wfile.write(piece)
            sent += len(piece)
            if server == "media" or target == "media_api":
                with self.stats.lock:
                    self.stats.media_bytes += len(piece)

    def _break(self, h: Handler, how: str) -> None:
        h.close_connection = True
        conn = h.connection
        try:
            if how == "reset":
                # let the client read what was sent, so that the reset comes mid-body
                time.sleep(0.03)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.rfile.close()
                conn.close()
            else:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Abort(how)

    def _send_xml(self, h: Handler, status: int, code: str, message: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
        self._send(h, status, {"Content-Type": "application/xml"}, [body], len(body), None, None, "media")
