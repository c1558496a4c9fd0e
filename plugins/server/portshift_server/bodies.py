"""Reading a request body: JSON only, bounded in size, nesting, time and characters.

Every refusal is a 4xx with one line; nothing is parsed that could raise deeper in the stack
(a ``RecursionError`` on deep nesting, a ``UnicodeEncodeError`` on a lone surrogate written to
SQLite or a file). The raw bytes are collected in one buffer that is zeroed once parsed.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .launcher import zero

MAX_BODY = 64 * 1024
MAX_DEPTH = 8  #: the deepest valid body is a job: {"source": {...}} (2 levels)
BODY_TIMEOUT = 10.0  #: seconds a client has to send the whole body
_CTRL = r"\x00-\x1f\x7f-\x9f"
_BIDI = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: Text a field of a request may hold: no control characters (C0, DEL, C1), no bidirectional
#: controls (they make a value display as something else). Python and ECMAScript read it alike.
TEXT_PATTERN = rf"^[^{_CTRL}{_BIDI}]*$"
TEXT = re.compile(TEXT_PATTERN)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def too_deep(raw: bytes | bytearray, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays/objects deeper than ``limit`` (strings are skipped)."""
    depth = 0
    for b in _STRINGS.sub(b'""', bytes(raw)):
        if b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif b in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def has_surrogate(value: Any) -> bool:
    """A lone surrogate anywhere in a parsed body (keys included): text no file or DB can store."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


async def _collect(request: Request, buf: bytearray) -> None:
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")


async def read_json(request: Request) -> Any:
    """The request body as JSON: application/json, at most MAX_BODY bytes sent within
    BODY_TIMEOUT seconds, nesting at most MAX_DEPTH levels, no lone surrogate."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, "send application/json")
    buf = bytearray()
    try:
        try:
            await asyncio.wait_for(_collect(request, buf), BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the body was not sent within {BODY_TIMEOUT:.0f} seconds") from None
        if too_deep(buf):
            raise HTTPException(400, f"the body nests deeper than {MAX_DEPTH} levels")
        try:
            doc = json.loads(buf)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HTTPException(400, "the body is not valid JSON") from None
        if has_surrogate(doc):
            raise HTTPException(400, "the body contains a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode")
        return doc
    finally:
        zero(buf)
