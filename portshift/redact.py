"""Redaction helpers: URLs without their secrets, text without known secrets."""

from __future__ import annotations

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
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str) -> str:
    """Replace every registered secret (in any of its encoded forms) in ``text``."""
    if not text:
        return text
    for mask in sorted(known_masks(), key=len, reverse=True):
        if mask in text:
            text = text.replace(mask, REDACTED)
    return text
