"""Redaction helpers: URLs without their secrets, text without known secrets."""

from __future__ import annotations

import re
import urllib.parse

from .secrets import known_masks, masks_version

REDACTED = "[REDACTED]"


def redact_url(url: str) -> str:
    """``url`` without query string, fragment or userinfo: safe to log, store or show."""
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


_compiled: tuple[int, re.Pattern[str] | None] = (-1, None)


def _pattern() -> re.Pattern[str] | None:
    """One compiled alternation of every mask (longest first), rebuilt only when masks change."""
    global _compiled
    version = masks_version()
    if _compiled[0] != version:
        masks = sorted(known_masks(), key=len, reverse=True)
        _compiled = (version, re.compile("|".join(map(re.escape, masks))) if masks else None)
    return _compiled[1]


def scrub(text: str) -> str:
    """Replace every registered secret (in any of its encoded forms) in ``text``."""
    if not text:
        return text
    pattern = _pattern()
    if pattern is None:
        return text
    return pattern.sub(REDACTED, text)


_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>]+)[?#][^\s'\"<>]*")
_URL_USERINFO = re.compile(r"(https?://)[^\s/@'\"<>]+@")


def sanitize_message(text: str, limit: int = 300) -> str:
    """An error text made safe to show and store: known secrets scrubbed, URL query strings and
    user info removed, one line, bounded length."""
    text = scrub(str(text))
    text = _URL_QUERY.sub(r"\1?[REDACTED]", text)
    text = _URL_USERINFO.sub(r"\1[REDACTED]@", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
