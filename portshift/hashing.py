"""HashingStream: the one pass over an artifact's bytes.

The core wraps every artifact's chunk iterator in a :class:`HashingStream` and hands it to the
sink. As the sink reads, SHA-256 and the byte count are computed on the fly; nothing is
buffered beyond what the sink asks for, nothing is re-read, nothing touches the disk. A sink
that needs a provider checksum of its own (MD5, CRC32C, per-part SHA-256) computes it on the
same bytes it reads (or registers an observer with :meth:`HashingStream.observe`).

A sink that writes what it reads at once (a file) reads with :meth:`HashingStream.views`
instead: for a large download received into reused buffers (the pipeline's read-ahead) it gets
the buffers themselves, without a copy, while a thread of the stream hashes the same buffer.
Receiving, hashing and writing then run on three threads at once (each releases the GIL).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from .errors import Interrupted
from .hash_keeping import KeptStates
from .hashing_thread import _Hasher

DEFAULT_CHUNK = 1024 * 1024


@runtime_checkable
class BufferSource(Protocol):
    """Chunks that can also be taken as reused buffers (the pipeline's ``ReadAhead``)."""

    buffered: bool

    def next_buffer(self) -> memoryview | None: ...

    def release(self, view: memoryview) -> None: ...


class HashingStream(KeptStates):
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
        resume: tuple[int, str] | None = None,
    ) -> None:
        self._source: Iterator[bytes] = iter(chunks)
        src = self._source
        #: the source, when it hands out reused buffers (fixed when it is made; no Protocol isinstance per read)
        self._buffer_source: BufferSource | None = (
            src if getattr(src, "buffered", False) is True and hasattr(src, "next_buffer") else None  # type: ignore[assignment]
        )
        self._buf = bytearray()
        self._sha: Any = hashlib.sha256()
        self._every = 0  #: keep the hash's state at every multiple of this offset (keep_states)
        self._states: dict[int, str] = {}
        self.resumed_at = 0  #: the offset this stream starts at (a resumed upload), else 0
        #: set by the core when this upload may be continued after a crash: the recording id,
        #: artifact name, extension and the source's validator (see :meth:`keep_states`)
        self.resume_info: dict[str, str | None] | None = None
        if resume is not None:
            from . import hash_state

            offset, state = resume
            self._sha = hash_state.restore(state)
            if self._sha.name != "sha256":
                raise ValueError("not a saved SHA-256 state")
            if self._sha.length != offset:
                raise ValueError("the saved SHA-256 state is not at the offset resumed from")
            self.resumed_at = offset
        self._hash: Callable[[Any], object] = self._sha.update
        self._observers: list[Callable[[bytes], object]] = []
        self._cancel = cancel
        self._max = max_bytes if max_bytes is not None else expect_size
        self._expect_size = expect_size
        self._expect_sha256 = expect_sha256.lower() if expect_sha256 else None
        #: the artifact's media type when the source knows it (sinks may store it with the object)
        self.content_type = content_type
        self.bytes_read = self.resumed_at  #: bytes taken from the source (and hashed), from offset 0
        self.finished = False  #: the source is exhausted
        #: readinto() on a buffered source: the hashing thread, the bytes hashed before it started,
        #: and the source buffer being copied out (view, its hasher piece, how far it was copied)
        self._hasher: _Hasher | None = None
        self._hasher_from = 0
        self._held: tuple[memoryview, list[object], int] | None = None

    # --- what the core reads afterwards -------------------------------------------------
    def sha256_hex(self) -> str:
        self.settle()
        return self._sha.hexdigest()

    def sha256_digest(self) -> bytes:
        self.settle()
        return self._sha.digest()

    def observe(self, fn: Callable[[bytes], object]) -> None:
        """Call ``fn(chunk)`` for every chunk from now on (same pass, e.g. ``md5.update``)."""
        if self.bytes_read > self.resumed_at:
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
            self._hash(chunk)
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

    def _buffers(self) -> BufferSource | None:
        """The source, when it hands out reused buffers (a large download read ahead)."""
        return self._buffer_source

    def _pull(self) -> bool:
        src = self._buffers()
        if src is not None:  # straight from the source's buffer into ours: one copy, no bytes object
            if self.finished:
                return False
            if self._cancel is not None and self._cancel.is_set():
                raise Interrupted("interrupted while transferring")
            view = src.next_buffer()
            if view is None:
                self._check_end()
                self.finished = True
                return False
            self._hash(view)
            for fn in self._observers:
                fn(view)  # type: ignore[arg-type]
            self.bytes_read += len(view)
            self._buf += view
            src.release(view)
            if self._max is not None and self.bytes_read > self._max:
                from .errors import IntegrityError

                raise IntegrityError(f"the source sent more than the {self._max} bytes declared")
            return True
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
        if self._hasher is not None:
            self.settle()
        if n is None or n < 0:
            while self._pull():
                pass
            out = bytes(self._buf)
            self._buf.clear()
            return out
        buf = self._buf
        if not buf and n and self._buffers() is None:
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

    def pieces(self, size: int) -> Iterator[tuple[bytes | bytearray, bool]]:
        """``(piece, is_last)`` pairs of up to ``size`` bytes, at least one (empty at an empty
        stream): for a sink whose last request differs (a commit, a final chunk with the whole
        object's checksum). One byte of look-ahead tells the last, so memory stays at one piece.
        A large download's pieces are filled with :meth:`readinto` (hashed on the stream's
        thread) and come as bytearrays."""
        if self._buffers() is None:
            carry = b""
            while True:
                piece = carry + self.read(size - len(carry))
                carry = self.read(1)
                yield piece, not carry
                if not carry:
                    return
        one = bytearray(1)
        head = b""
        while True:
            buf = bytearray(size)
            with memoryview(buf) as view:
                view[: len(head)] = head
                pos = len(head)
                while pos < size and (got := self.readinto(view[pos:])):
                    pos += got
            if pos < size:
                del buf[pos:]
            head = bytes(one) if self.readinto(one) else b""
            yield buf, not head
            if not head:
                return

    def views(self) -> Generator[memoryview, None, None]:
        """The rest of the stream as read-only views, each valid only until the next one is asked
        for (write it out or copy it before that). Pieces are as large as the source's buffers
        (512 KiB for a large download read ahead) or chunks; a large download's buffers are handed
        out without a copy while another thread hashes them. Errors are raised as :meth:`read`
        raises them, the end-of-stream checks before the last step ends."""
        if self._buf:
            head = bytes(self._buf)
            self._buf.clear()
            yield memoryview(head)
        src = self._buffers()
        if src is None:
            while (chunk := self._next()) is not None:
                yield memoryview(chunk)
            return
        if self.finished:
            return
        hasher = _Hasher(self._hash, self._observers, src.release)
        try:
            while True:
                if self._cancel is not None and self._cancel.is_set():
                    raise Interrupted("interrupted while transferring")
                if hasher.error is not None:
                    raise hasher.error
                view = src.next_buffer()
                if view is None:
                    break
                self.bytes_read += len(view)
                if self._max is not None and self.bytes_read > self._max:
                    from .errors import IntegrityError

                    raise IntegrityError(f"the source sent more than the {self._max} bytes declared")
                piece = hasher.submit(view)
                try:
                    yield view
                finally:
                    hasher.done(piece)
            hasher.drain()
            self._check_end()
            self.finished = True
        finally:
            hasher.stop()

    def readinto(self, b: Any) -> int:
        """Fill ``b`` (a writable buffer) from the stream; the number of bytes put in it, fewer
        than ``len(b)`` only at the end (0 there). For a sink that gathers pieces (parts, blocks)
        in buffers of its own: with a large download read ahead, the source's buffers are copied
        straight into ``b`` (one copy) while a thread of the stream hashes them, so hashing is off
        the sink's thread. Errors and end-of-stream checks as :meth:`read`."""
        out = memoryview(b).cast("B")
        n = 0
        if self._buf:  # what read() took from the source and did not hand out yet
            n = min(len(self._buf), len(out))
            out[:n] = self._buf[:n]
            del self._buf[:n]
        src = self._buffers()
        if src is None:
            while n < len(out) and (chunk := self._next()) is not None:
                k = min(len(chunk), len(out) - n)
                out[n : n + k] = memoryview(chunk)[:k]
                if k < len(chunk):
                    self._buf += memoryview(chunk)[k:]
                n += k
            return n
        while n < len(out):
            if self._held is None:
                try:
                    if not self._take_buffer(src):
                        break
                except BaseException:
                    with contextlib.suppress(BaseException):
                        self.settle()  # the stream failed: its thread ends with it
                    raise
            view, piece, pos = self._held  # type: ignore[misc]
            k = min(len(view) - pos, len(out) - n)
            out[n : n + k] = view[pos : pos + k]
            n, pos = n + k, pos + k
            if pos < len(view):
                self._held = (view, piece, pos)
            else:
                self._held = None
                self._hasher.done(piece)  # type: ignore[union-attr]
        return n

    def _take_buffer(self, src: BufferSource) -> bool:
        """The source's next buffer, handed to the hashing thread and held for readinto();
        ``False`` at the end (after the end-of-stream checks)."""
        if self.finished:
            return False
        if self._cancel is not None and self._cancel.is_set():
            raise Interrupted("interrupted while transferring")
        if self._hasher is None:
            self._hasher = _Hasher(self._hash, self._observers, src.release)
            self._hasher_from = self.bytes_read
        elif self._hasher.error is not None:
            raise self._hasher.error
        view = src.next_buffer()
        if view is None:
            self.settle()
            self._check_end()
            self.finished = True
            return False
        self.bytes_read += len(view)
        if self._max is not None and self.bytes_read > self._max:
            from .errors import IntegrityError

            raise IntegrityError(f"the source sent more than the {self._max} bytes declared")
        self._held = (view, self._hasher.submit(view), 0)
        return True

    def settle(self) -> None:
        """End the hashing thread readinto() started, once it hashed what it was given (what is
        left of a buffer being copied out is kept for the next read). Called by the stream itself
        before it hashes in the caller's thread again; the core calls it when a transfer ends."""
        hasher = self._hasher
        if hasher is None:
            return
        held, self._held = self._held, None
        if held is not None:
            view, piece, pos = held
            self._buf += view[pos:]
            hasher.done(piece)
        self._hasher = None
        hasher.stop()
        if hasher.error is not None:
            raise hasher.error

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        with contextlib.suppress(BaseException):
            self.settle()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
