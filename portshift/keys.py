"""Object keys: built from a template, always safe.

A key never holds an absolute path, ``..``, a backslash, CR, LF or any other control character,
whatever the source sends. Every template value is reduced to the alphabet ``[A-Za-z0-9._-]``;
when that changed the value, a short hash of the original is appended so that two different
ids never collide (``a/b`` and ``a_b`` become ``a_b-3f2a9c1e`` and ``a_b``).
"""

from __future__ import annotations

import hashlib
import re
import string
from datetime import datetime

from .errors import ConfigError

DEFAULT_TEMPLATE = "{year}/{month}/{day}/{id}/{artifact}.{ext}"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_SEGMENT_OK = re.compile(r"^[A-Za-z0-9._-]+$")
FIELDS = ("id", "artifact", "ext", "date", "year", "month", "day", "type", "source")


def safe_component(value: str, max_len: int = 100) -> str:
    """``value`` reduced to the safe alphabet, never empty, never ``.`` or ``..``."""
    original = str(value)
    cleaned = _SAFE.sub("_", original).strip(".")
    if not cleaned:
        cleaned = "_"
    if len(cleaned) > max_len:
        cleaned = cleaned[:max_len]
    if cleaned != original:
        cleaned = f"{cleaned}-{hashlib.sha256(original.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return cleaned


def check_template(template: str) -> None:
    """Raise ConfigError when the template uses unknown fields or unsafe literal text."""
    if not template or template.startswith("/"):
        raise ConfigError("[job] key_template must be a relative path template", hint=f"e.g. {DEFAULT_TEMPLATE!r}")
    seen = set()
    for literal, field, spec, conv in string.Formatter().parse(template):
        if literal and (_SAFE.sub("", literal.replace("/", "")) != literal.replace("/", "")):
            raise ConfigError(f"[job] key_template: the text {literal!r} has characters outside A-Z a-z 0-9 . _ - /")
        if field is None:
            continue
        if field not in FIELDS:
            raise ConfigError(f"[job] key_template: unknown field {{{field}}}", hint="valid: " + ", ".join(FIELDS))
        if spec or conv:
            raise ConfigError(f"[job] key_template: {{{field}}} takes no format spec")
        seen.add(field)
    for needed in ("id", "artifact"):
        if needed not in seen:
            raise ConfigError(f"[job] key_template must contain {{{needed}}} so that keys are unique")
    for segment in template.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError("[job] key_template has an empty, '.' or '..' path segment")


def build_key(
    template: str,
    *,
    recording_id: str,
    artifact: str,
    ext: str,
    started_at: datetime | None,
    fields: dict[str, str] | None = None,
    source: str = "",
) -> str:
    """The key of one artifact, relative to the export root."""
    when = started_at
    values = {
        "id": safe_component(recording_id),
        "artifact": safe_component(artifact),
        "ext": safe_component(ext or "bin", 16),
        "date": when.strftime("%Y-%m-%d") if when else "undated",
        "year": when.strftime("%Y") if when else "undated",
        "month": when.strftime("%m") if when else "00",
        "day": when.strftime("%d") if when else "00",
        "type": safe_component((fields or {}).get("type", "call")),
        "source": safe_component(source or "source"),
    }
    key = template.format(**values)
    assert_safe_key(key)
    return key


def assert_safe_key(key: str) -> None:
    segments = key.split("/")
    if not key or any(s in ("", ".", "..") or not _SEGMENT_OK.match(s) for s in segments):
        raise ValueError(f"unsafe key {key!r}")
