"""``http.client`` responses whose header block is read without the ``email`` package.

``http.client`` hands every response's header block to ``email.parser``, a general MIME parser
written in Python: at many small calls it was the largest single cost of a worker's own CPU (18 %
of the time the transfer threads held the GIL, issue 16). :class:`FastResponse` reads the block
itself, with ``http.client``'s own status line reader and limits (line length, number of
headers), and decides where the body ends by the same rules as ``http.client`` (chunked, a
length, or the connection's close; the tests compare both on the same answers), so the body is
read exactly as before. The headers it exposes are the same name/value pairs, in order, repeated
names kept, folded lines joined, in a :class:`ResponseHeaders` that the Chorus client reads
directly (no second copy into ``httpx.Headers`` per answer).
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any, overload

#: http.client's own limits
MAX_LINE = 65536
MAX_HEADERS = 100


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


class ResponseHeaders:
    """A response's header pairs, looked up by name in any case.

    ``get`` answers as ``httpx.Headers.get`` does (a repeated name's values joined with ``", "``),
    ``get_all`` and ``items`` as the ``email`` message ``http.client`` would have made, and
    ``first`` gives a repeated name's first value (what ``http.client`` frames a body by)."""

    __slots__ = ("_pairs", "_by_name")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        by_name: dict[str, list[str]] = {}
        for name, value in pairs:
            by_name.setdefault(name.lower(), []).append(value)
        self._by_name = by_name

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._by_name.get(name.lower())
        return default if values is None else ", ".join(values)

    def first(self, name: str) -> str | None:
        values = self._by_name.get(name.lower())
        return None if values is None else values[0]

    def get_all(self, name: str, default: Any = None) -> list[str] | Any:
        values = self._by_name.get(name.lower())
        return default if values is None else list(values)

    def items(self) -> list[tuple[str, str]]:
        """Every pair as received: names in their own case, repeated names repeated (as
        ``http.client``'s ``getheaders()``; not ``httpx.Headers.items()``, which joins them)."""
        return list(self._pairs)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


class FastResponse(http.client.HTTPResponse):
    """An ``HTTPResponse`` that parses its header block itself (see the module's text)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:  # http.client's own status line reader: its errors and limits
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            if status != http.client.CONTINUE:
                break
            _read_block(self.fp)  # a 100 Continue's headers are skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        message = ResponseHeaders(header_pairs(_read_block(self.fp)))
        self.headers = self.msg = message  # type: ignore[assignment]
        # where the body ends (RFC 9112 section 6.3), as http.client decides it (by the first value)
        coding = message.first("transfer-encoding")
        self.chunked = bool(coding and coding.lower() == "chunked")
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._closes(message)
        self.length = None
        length = message.first("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 or self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _closes(self, headers: ResponseHeaders) -> bool:
        """Whether the server closes the connection after this answer: ``http.client``'s rules,
        by the first value of each header as its email message gives it."""
        conn = headers.first("connection")
        if self.version == 11:
            return bool(conn and "close" in conn.lower())
        if headers.first("keep-alive") or (conn and "keep-alive" in conn.lower()):
            return False
        pconn = headers.first("proxy-connection")
        return not (pconn and "keep-alive" in pconn.lower())
