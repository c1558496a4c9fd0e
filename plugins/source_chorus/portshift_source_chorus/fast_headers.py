"""``http.client`` responses whose header block is read without the ``email`` package.

``http.client`` hands every response's header block to ``email.parser``, a general MIME parser
written in Python: at many small calls it was the largest single cost of a worker's own CPU (18 %
of the time the transfer threads held the GIL, issue 16). :class:`FastResponse` reads the block
itself, with ``http.client``'s own limits (line length, number of headers), and lets
``http.client`` work out the framing (chunked, length, keep-alive) from the status line and the
framing headers alone, so the body is read exactly as before. The headers it exposes are the same
name/value pairs, in order, repeated names kept, folded lines joined.
"""

from __future__ import annotations

import http.client
import io
from typing import Any

#: http.client's own limits
MAX_LINE = 65536
MAX_HEADERS = 100
#: the headers http.client needs to find where the body ends and whether the connection stays open
_FRAMING = frozenset({b"transfer-encoding", b"content-length", b"connection", b"keep-alive", b"proxy-connection"})


def _read_block(fp: Any) -> list[bytes]:
    """The header lines up to the empty line (or the end), as http.client reads them."""
    lines: list[bytes] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")


def header_pairs(lines: list[bytes]) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of header lines: folded lines joined, a line without a colon left
    out (the email parser records it as a defect and leaves it out too)."""
    pairs: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line[:1] in (" ", "\t"):
            if pairs:
                name, value = pairs[-1]
                pairs[-1] = (name, f"{value}\r\n{line}" if value else line.lstrip(" \t"))
            continue
        name, colon, value = line.partition(":")
        if colon and name and name == name.rstrip():
            pairs.append((name, value.lstrip(" \t")))
    return pairs


class FastResponse(http.client.HTTPResponse):
    """An ``HTTPResponse`` that parses its header block itself (see the module's text)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        fp = self.fp
        block: list[bytes] = []
        while True:
            status = fp.readline(MAX_LINE + 1)
            if len(status) > MAX_LINE:
                raise http.client.LineTooLong("status line")
            if not status:
                break  # http.client raises RemoteDisconnected for it below
            block = _read_block(fp)
            if status.split(None, 2)[1:2] != [b"100"]:  # a 100 Continue is skipped, as http.client does
                break
        block = block if status else []
        framing = b"".join(line for line in block if line.split(b":", 1)[0].strip().lower() in _FRAMING)
        real = self.fp
        self.fp = io.BytesIO(status + framing + b"\r\n" if status else b"")  # type: ignore[assignment]
        try:
            super().begin()  # the status line and the framing: http.client's own checks and rules
        finally:
            self.fp = real
        message = http.client.HTTPMessage()
        for name, value in header_pairs(block):
            message[name] = value
        self.headers = self.msg = message
