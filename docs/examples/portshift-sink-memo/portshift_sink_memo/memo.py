"""Memo lines: what the sink appends after each durable write, and how a reader checks them.

A line is a JSON object: ``key``, ``size``, ``sha256``, ``stored_at`` and, when a memo key is
configured, ``hmac``: the HMAC-SHA256 (hex) of the other four fields written as compact JSON
with sorted keys. A reader that knows the key can tell the sink's lines from anybody else's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from portshift import Secret

SIGNED_FIELDS = ("key", "size", "sha256", "stored_at")


def signed_text(doc: dict[str, Any]) -> bytes:
    """The exact bytes the HMAC covers."""
    return json.dumps({k: doc[k] for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def memo_line(key: str, size: int, sha256: str, stored_at: str, memo_key: Secret | None) -> bytes:
    doc: dict[str, Any] = {"key": key, "size": size, "sha256": sha256, "stored_at": stored_at}
    if memo_key is not None:
        doc["hmac"] = hmac.new(memo_key.reveal().encode(), signed_text(doc), hashlib.sha256).hexdigest()
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def check_line(line: str, memo_key: str) -> dict[str, Any]:
    """Parse one memo line and check its HMAC; raise ValueError when it does not match."""
    doc = json.loads(line)
    expected = hmac.new(memo_key.encode(), signed_text(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(doc.get("hmac", ""))):
        raise ValueError(f"memo line for {doc.get('key')!r} was not written with this key")
    return doc
