"""Object keys: built from a template, always safe.

A key never holds an absolute path, ``..``, a backslash, CR, LF or any other control character,
whatever the source sends. A value made only of ``[A-Za-z0-9._-]`` is used as it is; any other
byte of its UTF-8 form is written ``~XX`` (its hex code), a leading ``.`` too, so that the
mapping is one-to-one: two different ids never share a key (``a/b`` becomes ``a~2Fb``, which no
raw id can be, since ``~`` itself is always encoded). A value too long for a key keeps its start
and ends in ``~h`` and a hash of the whole value.
"""

from __future__ import annotations

import hashlib
import re
import string
from datetime import datetime, timezone

from .errors import ConfigError

DEFAULT_TEMPLATE = "{year}/{month}/{day}/{id}/{artifact}.{ext}"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_SEGMENT_OK = re.compile(r"[A-Za-z0-9._~-]+")
FIELDS = ("id", "artifact", "ext", "date", "year", "month", "day", "type", "source")


def safe_component(value: str, max_len: int = 100) -> str:
    """``value`` as one key segment: one-to-one, never empty, never ``.`` or ``..``."""
    text = str(value)
    if text and len(text) <= max_len and text[0] != "." and _SAFE.search(text) is None:
        return text  # only [A-Za-z0-9._-], not led by '.': as it is (the loop below gives the same)
    raw = text.encode("utf-8", "surrogatepass")
    out = []
    for i, b in enumerate(raw):
        if b in _SAFE_BYTES and not (i == 0 and b == 0x2E):
            out.append(chr(b))
        else:
            out.append(f"~{b:02X}")
    cleaned = "".join(out) or "~"
    if len(cleaned) > max_len:
        digest = hashlib.sha256(raw).hexdigest()[: 16 if max_len >= 40 else 8]
        keep = max(0, max_len - 2 - len(digest))
        head = cleaned[:keep]
        cut = head.rfind("~")
        if cut >= 0 and cut > len(head) - 3:  # never cut an ~XX escape in half
            head = head[:cut]
        cleaned = f"{head}~h{digest}"
    return cleaned


def check_template(template: str) -> None:
    """Raise ConfigError when the template uses unknown fields or unsafe literal text."""
    if not template or template.startswith("/"):
        raise ConfigError("[job] key_template must be a relative path template", hint=f"e.g. {DEFAULT_TEMPLATE!r}")
    seen = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"[job] key_template is not a valid template: {e}", hint=f"e.g. {DEFAULT_TEMPLATE!r}") from None
    order = []
    for literal, field, spec, conv in parsed:
        if literal and (_SAFE.sub("", literal.replace("/", "")) != literal.replace("/", "")):
            raise ConfigError(f"[job] key_template: the text {literal!r} has characters outside A-Z a-z 0-9 . _ - /")
        if field is None:
            continue
        if field not in FIELDS:
            raise ConfigError(f"[job] key_template: unknown field {{{field}}}", hint="valid: " + ", ".join(FIELDS))
        if spec or conv:
            raise ConfigError(f"[job] key_template: {{{field}}} takes no format spec")
        seen.add(field)
        order.append((literal, field))
    for needed in ("id", "artifact"):
        if needed not in seen:
            raise ConfigError(f"[job] key_template must contain {{{needed}}} so that keys are unique")
    for segment in template.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError("[job] key_template has an empty, '.' or '..' path segment")
    # {id} and {artifact} may hold any safe character: only a '/' between them keeps keys unique
    names = [f for _, f in order]
    i, a = names.index("id"), names.index("artifact")
    between = "".join(lit for lit, _ in order[min(i, a) + 1 : max(i, a) + 1])
    if "/" not in between:
        raise ConfigError("[job] key_template must separate {id} and {artifact} with a '/'", hint=f"e.g. {DEFAULT_TEMPLATE!r}")


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
    if when is not None:
        when = when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    # as strftime("%Y-%m-%d") splits them (years from 1000 on), without its cost at every file
    year, month, day = (str(when.year), f"{when.month:02d}", f"{when.day:02d}") if when else ("undated", "00", "00")
    values = {
        "id": safe_component(recording_id),
        "artifact": safe_component(artifact),
        "ext": safe_component(ext or "bin", 16),
        "date": f"{year}-{month}-{day}" if when else "undated",
        "year": year,
        "month": month,
        "day": day,
        "type": safe_component((fields or {}).get("type", "call")),
        "source": safe_component(source or "source"),
    }
    key = template.format(**values)
    assert_safe_key(key)
    return key


def assert_safe_key(key: str) -> None:
    segments = key.split("/")
    if not key or any(s in ("", ".", "..") or not _SEGMENT_OK.fullmatch(s) for s in segments):
        raise ValueError(f"unsafe key {key!r}")
