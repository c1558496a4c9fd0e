"""Test content and the one put the core does: deterministic bytes, irregular chunks, a source
that fails mid-stream, and ``put_bytes``."""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..api import Artifact, Opened, PutResult, Sink
from ..hashing import HashingStream


class SourceFailure(Exception):
    """Raised by :func:`failing_chunks` mid-stream, as a dropped download would."""


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test content of ``size`` bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def chunked(data: bytes, sizes: Iterator[int] | None = None) -> Iterator[bytes]:
    """``data`` in irregular chunks (1, 7, 4096, 65537, ... bytes), as a network would deliver it."""
    sizes = sizes or itertools.cycle([1, 7, 4096, 65537, 1000, 300_001])
    pos = 0
    for n in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + n]
        pos += n


def failing_chunks(data: bytes, fail_after: int) -> Iterator[bytes]:
    """Yield ``data`` up to ``fail_after`` bytes, then raise :class:`SourceFailure`."""
    yield from chunked(data[:fail_after])
    raise SourceFailure(f"connection dropped after {fail_after} bytes")


def put_bytes(
    sink: Sink, key: str, chunks: Iterable[bytes] | bytes, size: int | None = None, **stream_options: object
) -> tuple[PutResult, HashingStream]:
    """Run one put the way the core does; return the sink's result and the (consumed) stream.

    ``stream_options`` go to :class:`~portshift.hashing.HashingStream` (``expect_size=``,
    ``expect_sha256=``: what the source declared, checked at the end of the stream)."""
    if isinstance(chunks, bytes):
        chunks = chunked(chunks)
    stream = HashingStream(chunks, **stream_options)  # type: ignore[arg-type]
    result = sink.put(key, stream, size)
    return result, stream


def unique_key(name: str = "object") -> str:
    """A key no other test uses: ``conformance/<12 hex>/<name>.bin``."""
    return f"conformance/{uuid.uuid4().hex[:12]}/{name}.bin"


def env_flag(name: str) -> bool:
    """``True`` when the environment variable ``name`` is ``1``, ``true`` or ``yes`` (any case):
    for tests a plugin runs only on request (``if not env_flag("ACME_LIVE"): pytest.skip(...)``)."""
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


def read_artifact(artifact: Artifact) -> tuple[bytes, Opened]:
    """Open ``artifact`` once and read it whole, as the core would (closing it either way);
    returns the bytes and the :class:`~portshift.api.Opened` (its declared size, type...)."""
    opened = artifact.open()
    try:
        data = b"".join(opened.chunks)
    finally:
        if opened.close:
            opened.close()
    return data, opened


def read_back_folder(root: Path) -> Callable[[str], bytes | None]:
    """A ``read_back`` for a sink that stores files under the folder ``root``: the bytes of the
    file at ``root/key``, or ``None`` when there is none."""

    def read(key: str) -> bytes | None:
        path = root / key
        return path.read_bytes() if path.is_file() else None

    return read
