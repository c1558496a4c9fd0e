"""FastResponse (issue 16): the same status, headers, framing and body as ``http.client``'s own
response for what servers send, with ``http.client``'s limits; only the email parser is gone."""

from __future__ import annotations

import http.client
import io

import pytest
from portshift_source_chorus.fast_headers import FastResponse, ResponseHeaders


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def _answer(cls: type[http.client.HTTPResponse], raw: bytes, method: str = "GET") -> tuple[object, ...]:
    r = cls(_Sock(raw), method=method)  # type: ignore[arg-type]
    r.begin()
    return r.status, r.reason, r.version, r.getheaders(), r.chunked, r.length, r.will_close, r.read()


ANSWERS = {
    "json with a length and a repeated header": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
    "a redirect after a 100 Continue, closing": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\n"
    b"Location: https://media.example/x?sig=a%2Fb\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    "chunked with folded lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Fold: a\r\n  b\r\n\tc\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.0 without a length, to the close": b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until the close",
    "no content": b"HTTP/1.1 204 No Content\r\nDate: Sat, 05 Dec 2026 05:00:00 GMT\r\n\r\n",
    "bare LF line ends and odd spacing": b"HTTP/1.1 206 Partial Content\nContent-Range:   bytes 0-3/10\n"
    b'content-length:4\nETag: "e1"\n\nabcd',
    "keep-alive header and an empty value": b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-Empty:\r\n"
    b"Content-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("raw", list(ANSWERS.values()), ids=list(ANSWERS))
def test_the_answer_is_read_as_http_client_reads_it(raw: bytes) -> None:
    assert _answer(FastResponse, raw) == _answer(http.client.HTTPResponse, raw)


def test_a_head_answer_has_no_body() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    assert _answer(FastResponse, raw, "HEAD") == _answer(http.client.HTTPResponse, raw, "HEAD")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"NOT HTTP\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/2.0 200 OK\r\n\r\n", http.client.UnknownProtocol),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 " + b"a" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n", http.client.HTTPException),
    ],
    ids=["nothing", "not a status line", "unknown version", "a long header", "a long status line", "too many headers"],
)
def test_what_http_client_refuses_is_refused_alike(raw: bytes, error: type[Exception]) -> None:
    for cls in (FastResponse, http.client.HTTPResponse):
        with pytest.raises(error):
            _answer(cls, raw)


def test_a_line_without_a_colon_is_left_out_and_the_headers_after_it_are_kept() -> None:
    # the email parser took such a line as the start of a body and dropped what followed; a
    # server's later framing header (Content-Length) must not be lost that way
    raw = b"HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok"
    status, *_, headers, chunked, length, will_close, body = _answer(FastResponse, raw)
    assert (status, headers, length, body) == (200, [("Content-Length", "2")], 2, b"ok")


def test_the_headers_are_looked_up_in_any_case_repeated_names_joined_as_httpx_does() -> None:
    import httpx

    raw = ANSWERS["json with a length and a repeated header"]
    for cls in (FastResponse, http.client.HTTPResponse):  # getheader: http.client's own answer
        r = cls(_Sock(raw), method="GET")  # type: ignore[arg-type]
        r.begin()
        assert (r.getheader("set-cookie"), r.getheader("X-None", "-")) == ("a=1, b=2", "-")
    r = FastResponse(_Sock(raw), method="GET")  # type: ignore[arg-type]
    r.begin()
    headers, theirs = r.headers, httpx.Headers(r.getheaders())
    assert isinstance(headers, ResponseHeaders)  # the client reads these, no copy into httpx.Headers
    for name in ("SET-COOKIE", "content-type", "Content-Length", "x-none"):
        assert headers.get(name) == theirs.get(name)
        assert (name in headers) == (name in theirs)
    assert headers.get("x-none", "") == "" and headers.first("Set-Cookie") == "a=1"
    assert headers.get_all("set-cookie") == ["a=1", "b=2"] and headers["content-length"] == "5"
    with pytest.raises(KeyError):
        headers["x-none"]


def test_a_connection_is_kept_or_closed_as_http_client_decides_it() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ]
    for raw in answers:
        assert _answer(FastResponse, raw)[6] == _answer(http.client.HTTPResponse, raw)[6], raw
