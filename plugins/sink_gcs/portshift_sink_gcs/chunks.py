"""Reading an artifact in chunks with one byte of look-ahead, and the CRC32C and MD5 computed in
the same pass as the core's SHA-256."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import google_crc32c
import requests

from portshift import HashingStream, SinkError


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def read_chunks(stream: HashingStream, chunk_size: int) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, is_last)`` pairs of up to ``chunk_size`` bytes; at least one (empty) chunk."""
    carry = b""
    while True:
        chunk = carry + stream.read(chunk_size - len(carry))
        carry = stream.read(1)
        yield chunk, not carry
        if not carry:
            return


class Digests:
    """CRC32C and MD5 of everything the stream yields, fed by ``HashingStream.observe``."""

    def __init__(self) -> None:
        self.crc32c = google_crc32c.Checksum()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self.crc32c.update(data)
        self.md5.update(data)

    def values(self) -> dict[str, str]:
        return {"crc32c": b64(self.crc32c.digest()), "md5": b64(self.md5.digest())}


def persisted_of(response: requests.Response) -> int:
    """Bytes persisted according to a 308's ``Range: bytes=0-N`` (none when absent)."""
    value = response.headers.get("Range", "")
    if not value:
        return 0
    try:
        return int(value.rsplit("-", 1)[1]) + 1
    except (IndexError, ValueError):
        raise SinkError("GCS answered an unreadable Range header", operation="upload chunk", retryable=True) from None
