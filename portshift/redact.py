"""Redaction helpers: URLs without their secrets, text without known secrets."""

from __future__ import annotations

import re
import urllib.parse

from .secrets import known_masks

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


def scrub(text: str) -> str:
    """Replace every registered secret (in any of its encoded forms) in ``text``."""
    if not text:
        return text
    for mask in sorted(known_masks(), key=len, reverse=True):
        if mask in text:
            text = text.replace(mask, REDACTED)
    return text


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
