"""Content types from a source, checked before they become a header.

A source may give any text as an artifact's content type; a sink puts it in a request header
(and GCS in a multipart part header), so a value with a line break or a stray character could
forge a header. :func:`media_type` accepts only a media type as HTTP defines it (RFC 9110:
``type "/" subtype *( ";" parameter )``, tokens and quoted strings without control characters),
at most 255 characters.
"""

from __future__ import annotations

import logging
import mimetypes
import re

__all__ = ["DEFAULT_CONTENT_TYPE", "content_type_for", "media_type"]

log = logging.getLogger("portshift.media_types")

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_TCHARS = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_QUOTED = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}(?:[ \t]*;[ \t]*{_TCHARS}=(?:{_TCHARS}|{_QUOTED}))*")


def media_type(value: str | None) -> str | None:
    """``value`` (stripped) when it is a well-formed media type, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 255 or not _MEDIA_TYPE.fullmatch(value):
        return None
    return value


def content_type_for(given: str | None, name: str, default: str = DEFAULT_CONTENT_TYPE) -> str:
    """The Content-Type to store ``name`` with: the source's media type when well-formed, else a
    guess from the name's extension, else ``default``. A malformed value is logged (not shown)."""
    checked = media_type(given)
    if checked is not None:
        return checked
    if given is not None and str(given).strip():
        log.warning("the source gave a content type that is not a valid media type; guessing from the file name")
    return mimetypes.guess_type(name)[0] or default
