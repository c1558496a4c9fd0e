"""HashingStream: the one pass over an artifact's bytes.

The core wraps every artifact's chunk iterator in a :class:`HashingStream` and hands it to the
sink. As the sink reads, SHA-256 and the byte count are computed on the fly; nothing is
buffered beyond what the sink asks for, nothing is re-read, nothing touches the disk. A sink
that needs a provider checksum of its own (MD5, CRC32C, per-part SHA-256) computes it on the
same bytes it reads (or registers an observer with :meth:`HashingStream.observe`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator

from .errors import Interrupted

DEFAULT_CHUNK = 1024 * 1024


class HashingStream:
    """A read-once, file-like byte stream that hashes what passes through it."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        cancel: threading.Event | None = None,
        max_bytes: int | None = None,
        expect_size: int | None = None,
        expect_sha256: str | None = None,
        content_type: str | None = None,
    ) -> None:
        self._source: Iterator[bytes] = iter(chunks)
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._observers: list[Callable[[bytes], object]] = []
        self._cancel = cancel
        self._max = max_bytes if max_bytes is not None else expect_size
        self._expect_size = expect_size
        self._expect_sha256 = expect_sha256.lower() if expect_sha256 else None
        #: the artifact's media type when the source knows it (sinks may store it with the object)
        self.content_type = content_type
        self.bytes_read = 0  #: bytes taken from the source (and hashed)
        self.finished = False  #: the source is exhausted

    # --- what the core reads afterwards -------------------------------------------------
    def sha256_hex(self) -> str:
        return self._sha.hexdigest()

    def sha256_digest(self) -> bytes:
        return self._sha.digest()

    def observe(self, fn: Callable[[bytes], object]) -> None:
        """Call ``fn(chunk)`` for every chunk from now on (same pass, e.g. ``md5.update``)."""
        if self.bytes_read:
            raise RuntimeError("observe() must be called before the first read")
        self._observers.append(fn)

    # --- what the sink uses -------------------------------------------------------------
    def _next(self) -> bytes | None:
        """The next non-empty chunk of the source, hashed and counted; None at the end."""
        if self.finished:
            return None
        if self._cancel is not None and self._cancel.is_set():
            raise Interrupted("interrupted while transferring")
        for chunk in self._source:
            if not chunk:
                continue
            if type(chunk) is not bytes:
                chunk = bytes(chunk)  # a bytearray/memoryview the source may reuse: take a copy
            self._sha.update(chunk)
            for fn in self._observers:
                fn(chunk)
            self.bytes_read += len(chunk)
            if self._max is not None and self.bytes_read > self._max:
                from .errors import IntegrityError

                raise IntegrityError(f"the source sent more than the {self._max} bytes declared")
            return chunk
        self._check_end()
        self.finished = True
        return None

    def _pull(self) -> bool:
        chunk = self._next()
        if chunk is None:
            return False
        self._buf += chunk
        return True

    def _check_end(self) -> None:
        # Raised from read() *before* the sink sees the end of the stream, so that a truncated
        # or corrupted artifact makes the sink abort instead of committing it.
        from .errors import IntegrityError

        if self._expect_size is not None and self.bytes_read != self._expect_size:
            raise IntegrityError(f"{self.bytes_read} bytes received, {self._expect_size} declared by the source")
        if self._expect_sha256 is not None and self._sha.hexdigest() != self._expect_sha256:
            raise IntegrityError("the SHA-256 differs from the one the source declared")

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n < 0``); ``b""`` at the end."""
        if n is None or n < 0:
            while self._pull():
                pass
            out = bytes(self._buf)
            self._buf.clear()
            return out
        buf = self._buf
        if not buf and n:
            # the common case: a source chunk of the size asked for passes through without a copy
            chunk = self._next()
            if chunk is None:
                return b""
            size = len(chunk)
            if size == n:
                return chunk
            if size > n:
                buf += memoryview(chunk)[n:]
                return chunk[:n]
            buf += chunk
        while len(buf) < n and self._pull():
            pass
        if len(buf) <= n:
            out = bytes(buf)
            buf.clear()
            return out
        with memoryview(buf) as view:
            out = bytes(view[:n])  # one copy (slicing a bytearray and then bytes() made two)
        del buf[:n]  # O(1): a bytearray drops its head without moving the rest
        return out

    def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, fewer only at the end of the stream (for fixed-size parts)."""
        return self.read(n)

    def chunks(self, size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Fixed-size pieces of ``size`` bytes (the last one shorter) until the end."""
        while True:
            piece = self.read(size)
            if not piece:
                return
            yield piece

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
