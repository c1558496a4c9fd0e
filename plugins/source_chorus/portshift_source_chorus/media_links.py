"""Media answers: the file extension from a Content-Type, the download link in a JSON answer,
and masking that link (a credential) from every log."""

from __future__ import annotations

import mimetypes
import urllib.parse
from typing import Any

import httpx

from portshift import register_mask

from .diagnostics import MAX_ERROR_BODY
from .media import MediaResponse

#: file extension by media type (the final response's Content-Type)
EXTENSIONS = {
    "video/mp4": "mp4",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "aac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/webm": "webm",
    "video/webm": "webm",
    "audio/ogg": "ogg",
    "video/ogg": "ogv",
    "audio/flac": "flac",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
    "video/x-msvideo": "avi",
    "video/x-flv": "flv",
    "video/3gpp": "3gp",
    "audio/3gpp": "3gp",
    "audio/basic": "au",
    "application/vnd.apple.mpegurl": "m3u8",
    "application/octet-stream": "bin",
}

#: keys that may hold the download link in the JSON answer of /media (undocumented: probed in order)
LINK_KEYS = (
    "url",
    "download_url",
    "downloadUrl",
    "media_url",
    "mediaUrl",
    "signed_url",
    "signedUrl",
    "download_link",
    "downloadLink",
    "link",
    "href",
    "location",
)


def extension_for(content_type: str | None) -> str:
    if not content_type:
        return "bin"
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in EXTENSIONS:
        return EXTENSIONS[ctype]
    guessed = mimetypes.guess_extension(ctype, strict=False)
    if guessed and guessed[1:].isalnum():
        return guessed[1:]
    return "bin"


def find_link(doc: Any) -> str | None:
    """The download link in the JSON answer of ``/media`` (field names are undocumented)."""
    level: list[Any] = [doc]
    fallback: str | None = None
    for _ in range(6):
        nxt: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                for key in LINK_KEYS:
                    value = node.get(key)
                    if isinstance(value, str) and "://" in value:
                        return value
                for key, value in node.items():
                    if isinstance(value, (dict, list)):
                        nxt.append(value)
                    elif (
                        fallback is None
                        and isinstance(value, str)
                        and "://" in value
                        and ("url" in str(key).lower() or "link" in str(key).lower())
                    ):
                        fallback = value
            elif isinstance(node, list):
                nxt.extend(node)
        level = nxt
    return fallback


def mask_link(url: str) -> list[str]:
    """A download link is a credential: hide it (and its signature parts) from every log.
    Returns what was masked, so it can be forgotten once the download is over."""
    masked = [url]
    parts = urllib.parse.urlsplit(url)
    if parts.query:
        masked.append(parts.query)
        for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if len(value) >= 12:
                masked.append(value)
    if len(parts.path) >= 24:
        masked.append(parts.path)
    for value in masked:
        register_mask(value)
    return masked


def drain(resp: httpx.Response | MediaResponse) -> None:
    """Close a response; read a small body first so that its connection can be reused."""
    try:
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= MAX_ERROR_BODY:
            resp.read()
    except httpx.HTTPError:
        pass
    finally:
        resp.close()
