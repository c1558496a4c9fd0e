"""Reading an artifact in chunks with one byte of look-ahead, and the CRC32C and MD5 computed in
the same pass as the core's SHA-256."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import google_crc32c
import requests

from portshift import HashingStream, SinkError, hash_state


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def read_chunks(stream: HashingStream, size: int) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, is_last)`` pairs of up to ``size`` bytes (:meth:`portshift.HashingStream.pieces`)."""
    return stream.pieces(size)


class Digests:
    """CRC32C and MD5 of everything the stream yields, fed by ``HashingStream.observe``.

    :meth:`saveable` ones (a resumable upload) also keep both at every multiple of ``every``
    bytes: the CRC32C as its integer value (``google_crc32c.extend`` goes on from it) and the MD5
    as an OpenSSL state (:mod:`portshift.hash_state`), so that the whole-object checksums sent on
    the final request can be continued by another process from a chunk boundary."""

    def __init__(self, crc: int = 0, md5: Any = None, offset: int = 0, every: int = 0) -> None:
        self.crc = crc
        self.md5: Any = md5 if md5 is not None else hashlib.md5(usedforsecurity=False)
        self.offset = offset  #: bytes seen, from the start of the object
        self.every = every
        self._kept: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wait: Callable[[int], None] | None = None

    def follow(self, stream: HashingStream) -> None:
        """Be fed by ``stream`` (an observer; on a thread of the stream for a large download)."""
        stream.observe(self.update)
        self._wait = stream.wait_hashed

    @classmethod
    def saveable(cls, every: int) -> Digests | None:
        """Digests that keep their state at every multiple of ``every``; ``None`` when this
        process has no saveable MD5."""
        md5 = hash_state.new("md5")
        return cls(md5=md5, every=every) if md5 is not None else None

    @classmethod
    def resumed(cls, record: str, offset: int, every: int) -> Digests:
        """Digests taken up from a :meth:`record` at ``offset``; ``ValueError`` when it is not
        one, or not at that offset."""
        crc_text, _, md5_text = record.partition(" ")
        crc = int(crc_text)
        md5 = hash_state.restore(md5_text)
        if md5.name != "md5" or md5.length != offset or not 0 <= crc < 2**32:
            raise ValueError("not a CRC32C and MD5 state at this offset")
        return cls(crc=crc, md5=md5, offset=offset, every=every)

    def update(self, data: bytes | memoryview) -> None:
        if type(data) is not bytes:
            # a view of the source's reused buffer (a large download read ahead); google_crc32c
            # takes bytes only, not even a read-only view
            data = bytes(data)
        if not self.every:
            self.crc = google_crc32c.extend(self.crc, data)
            self.md5.update(data)
            self.offset += len(data)
            return
        start = 0
        while start < len(data):
            room = self.every - self.offset % self.every
            piece = data if start == 0 and room >= len(data) else data[start : start + room]
            start += len(piece)
            self.crc = google_crc32c.extend(self.crc, piece)
            self.md5.update(piece)
            self.offset += len(piece)
            if self.offset % self.every == 0:
                with self._lock:
                    self._kept[self.offset] = self.record()

    def record(self) -> str:
        """The state now, as text: ``"<crc32c> <md5 state>"`` (at a 64-byte boundary)."""
        return f"{self.crc} {self.md5.export()}"

    def kept(self, offset: int) -> str | None:
        """The state kept at ``offset`` (a multiple of ``every`` already read), forgotten then;
        ``None`` if the stream's hashing never got there (it failed)."""
        if self._wait is not None:
            self._wait(offset)  # the observer may still be a few buffers behind the bytes read
        with self._lock:
            return self._kept.pop(offset, None)

    def values(self) -> dict[str, str]:
        return {"crc32c": b64(self.crc.to_bytes(4, "big")), "md5": b64(self.md5.digest())}


def persisted_of(response: requests.Response) -> int:
    """Bytes persisted according to a 308's ``Range: bytes=0-N`` (none when absent)."""
    value = response.headers.get("Range", "")
    if not value:
        return 0
    try:
        return int(value.rsplit("-", 1)[1]) + 1
    except (IndexError, ValueError):
        raise SinkError("GCS answered an unreadable Range header", operation="upload chunk", retryable=True) from None
