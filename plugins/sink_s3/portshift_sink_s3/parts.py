"""The pieces an S3 upload is made of: filling a part from the stream in one buffer, the
checksums and headers sent with it, what S3 answered (version, ETag), and the wrapper that
carries a mapped portshift error out of a retried call."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

from portshift import HashingStream, PortshiftError, media_type

log = logging.getLogger("portshift.s3")

#: How much is taken from the stream at a time while a part is filled. (1 MiB, the Chorus
#: source's chunk, would pass each chunk through without the stream's internal copies, but a
#: source with smaller chunks then makes the stream gather 1 MiB and copy it. Measured: 0.40 vs 0.35
#: CPU-s to hash and fill the parts of 512 MiB, i.e. ~0.5 % of an upload; not worth the memory.)
READ_SIZE = 256 * 1024


def send_buffer(body: bytes | bytearray) -> bytearray:
    """``body`` as a bytearray: botocore wraps a ``bytes`` body of PutObject/UploadPart in a
    ``BytesIO``, which it then sends 16 KiB at a time after an ``Expect: 100-continue`` round
    trip (up to 1 s when the server sends no 100 Continue); a bytearray goes out as it is, in one
    ``sendall``. Only small bodies are ``bytes`` here (read_part builds parts as bytearrays)."""
    return body if isinstance(body, bytearray) else bytearray(body)


def read_part(stream: HashingStream, size: int, start: bytes | bytearray = b"") -> bytes | bytearray:
    """Up to ``size`` bytes of ``stream`` (after ``start``), fewer only at its end.

    A small artifact comes back as the bytes read; a large one is read into one buffer of
    ``size`` bytes allocated once it is known to be large (``stream.readinto``: a large
    download's buffers are copied straight into it while the stream hashes them on a thread of
    its own), so that a part costs its own size in memory and the whole-file SHA-256 is off this
    thread.
    """
    head: bytes | bytearray = start
    if not head:
        head = bytearray(min(READ_SIZE, size))
        got = _fill(stream, memoryview(head))
        if got < len(head):
            del head[got:]
            return head
    if len(head) >= size:
        return head
    buf = bytearray(size)
    with memoryview(buf) as view:
        view[: len(head)] = head
        pos = len(head) + _fill(stream, view[len(head) :])
    del head
    if pos < size:
        del buf[pos:]
    return buf


def _fill(stream: HashingStream, view: memoryview) -> int:
    """Fill ``view`` from ``stream``; fewer bytes only at its end."""
    pos = 0
    while pos < len(view):
        got = stream.readinto(view[pos:])
        if not got:
            break
        pos += got
    return pos


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def content_type_args(value: str | None) -> dict[str, str]:
    """``{"ContentType": value}`` for a well-formed media type, else nothing (S3 then stores
    ``binary/octet-stream``). The value comes from the source, so it is checked before it
    becomes a header."""
    if not value:
        return {}
    checked = media_type(value)
    if checked is None:
        log.warning("the source gave a content type that is not a valid media type; the object is stored without one")
        return {}
    return {"ContentType": checked}


@dataclass(frozen=True)
class Part:
    number: int
    etag: str
    checksum: str  # base64 SHA-256, as S3 returned it (and equal to ours)
    digest: bytes
    size: int


class StoreError(Exception):
    """An S3 call failed: carries the mapped portshift error, raised from None at the boundary."""

    def __init__(self, error: PortshiftError) -> None:
        super().__init__(str(error))
        self.error = error


def version_of(resp: dict[str, Any]) -> str | None:
    """The version id when the bucket is versioned, else the ETag."""
    vid = resp.get("VersionId")
    if vid and vid != "null":
        return str(vid)
    return etag_of(resp)


def etag_of(resp: dict[str, Any]) -> str | None:
    etag = resp.get("ETag")
    return str(etag) if etag else None
