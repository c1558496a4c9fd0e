"""Read-ahead: a large artifact's chunks received by a thread of their own while the sink's thread
hashes and writes them (receiving, SHA-256 and writing each release the GIL, so they overlap).

A source that offers ``Opened.readinto`` is received into a few buffers that are reused
(no allocation and no copy per chunk): the thread fills a free buffer, the stream hashes it and
the sink writes it, each in a thread of its own, and the buffer goes back to the pool once both are
done with it (:meth:`ReadAhead.next_buffer`, :meth:`ReadAhead.release`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from ..errors import Interrupted

log = logging.getLogger("portshift.run")

#: artifacts declared at least this large are read ahead from their first byte; those of unknown
#: size once this much has passed (most are small documents, which a thread would only slow down)
READ_AHEAD_FROM = 8 * 1024 * 1024
READ_AHEAD_CHUNKS = 4  #: chunks held ready for the sink, at most ...
READ_AHEAD_BYTES = 16 * 1024 * 1024  #: ... and at most this many bytes (at least one chunk)
#: buffers of a source read with ``readinto``: their number and size. Small enough that a buffer
#: is still in the CPU cache when the hashing and writing threads read it: 4 MiB buffers were
#: measured 1.5-3x slower than 256 KiB-1 MiB ones (benchmarks/README.md, issue 19)
READ_BUFFERS = 8
READ_BUFFER_SIZE = 512 * 1024
_POLL = 0.2  #: seconds between checks of the cancel event while waiting


class ReadAhead:
    """The source's chunks, received by a thread of their own while the sink hashes and writes.

    Receiving (TLS decryption), SHA-256 and writing each release the GIL, so they overlap instead
    of running one after another in the sink's thread. The thread is at most
    ``READ_AHEAD_CHUNKS`` chunks (and ``READ_AHEAD_BYTES``) ahead; with ``readinto``, at most
    ``READ_BUFFERS`` buffers of ``READ_BUFFER_SIZE`` exist, filled or being filled or in use. An exception in the source
    reaches the reader unchanged, in order, after the chunks before it. ``close()`` (always
    called) stops the thread: it finishes the chunk it is receiving, closes the source's iterator
    in its own thread (a generator cannot be closed from another thread while it runs) and ends.
    A cancel (SIGINT/SIGTERM) is noticed within ``_POLL`` seconds even while the source is silent.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        cancel: threading.Event,
        *,
        start_after: int = 0,
        readinto: Callable[[memoryview], int] | None = None,
    ) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        #: the source's ``readinto``: used (instead of ``chunks``) when the thread starts at once
        self._readinto = readinto if start_after <= 0 else None
        self._free: list[bytearray] = []  #: buffers back from the reader, ready to be filled again
        self._allocated = 0
        self._cancel = cancel
        self._start_after = start_after  #: bytes passed through inline before the thread starts
        self._passed = 0
        self._cond = threading.Condition()
        self._ready: list[bytes] | list[tuple[bytearray, int]] = []  #: FIFO of chunks (or filled buffers)
        self._ready_bytes = 0
        self._end: BaseException | None = None  #: StopIteration, or what the source raised
        self._stop = False
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    @property
    def buffered(self) -> bool:
        """True when the source is read into reused buffers (:meth:`next_buffer`)."""
        return self._readinto is not None

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._fill if self._readinto is not None else self._produce,
            name=f"{threading.current_thread().name}-read-ahead",
            daemon=True,
        )
        self._thread.start()

    def _take(self) -> object:
        """The next item the thread made ready; StopIteration at the end, the source's error after
        the items before it, Interrupted on a cancel."""
        with self._cond:
            while not self._ready:
                if self._stop:
                    raise StopIteration
                if self._end is not None:
                    end = self._end
                    if isinstance(end, StopIteration):
                        raise StopIteration
                    raise end
                if self._cancel.is_set():
                    raise Interrupted("interrupted while transferring")
                self._cond.wait(_POLL)
            item = self._ready.pop(0)
            self._ready_bytes -= item[1] if isinstance(item, tuple) else len(item)
            self._cond.notify_all()
            return item

    def next_buffer(self) -> memoryview | None:
        """The next filled buffer as a read-only view (``None`` at the end); hand it back with
        :meth:`release` once done with it, and do not use it after that. Only when :attr:`buffered`."""
        if self._thread is None:
            if self._stop:
                return None
            self._start()
        try:
            buf, n = self._take()  # type: ignore[misc]
        except StopIteration:
            return None
        return memoryview(buf)[:n].toreadonly()

    def release(self, view: memoryview) -> None:
        """Give a buffer from :meth:`next_buffer` back to be filled again."""
        buf = view.obj
        if isinstance(buf, bytearray):
            with self._cond:
                if not self._stop:
                    self._free.append(buf)
                    self._cond.notify_all()

    def __next__(self) -> bytes:
        if self._readinto is not None:
            view = self.next_buffer()
            if view is None:
                raise StopIteration
            chunk = bytes(view)  # a reader of bytes: one copy, the buffer is filled again
            self.release(view)
            return chunk
        if self._thread is None:
            if self._stop:
                raise StopIteration
            if self._passed < self._start_after:
                chunk = next(self._it)
                self._passed += len(chunk)
                return chunk
            self._start()
        return self._take()  # type: ignore[return-value]

    def _fill(self) -> None:
        """The thread of a buffered source: fill free buffers to the brim, in order, until the end."""
        readinto = self._readinto
        assert readinto is not None
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._free and self._allocated >= READ_BUFFERS:
                        self._cond.wait()
                    if self._stop:
                        return
                    buf = self._free.pop() if self._free else None
                    if buf is None:
                        self._allocated += 1
                if buf is None:
                    buf = bytearray(READ_BUFFER_SIZE)
                if self._cancel.is_set():
                    return  # the reader raises Interrupted
                view = memoryview(buf)
                got = 0
                end: BaseException | None = None
                try:
                    while got < READ_BUFFER_SIZE:
                        n = readinto(view[got:])
                        if not n:
                            end = StopIteration()
                            break
                        got += n
                except BaseException as e:  # noqa: BLE001 - handed to the reader, after the bytes before it
                    end = e
                with self._cond:
                    if got:
                        self._ready.append((buf, got))  # type: ignore[arg-type]
                        self._ready_bytes += got
                    else:
                        self._free.append(buf)
                    if end is not None:
                        self._end = end
                    self._cond.notify_all()
                if end is not None:
                    return
        finally:
            self._close_source()

    def _produce(self) -> None:
        it = self._it
        try:
            while True:
                with self._cond:
                    while (
                        not self._stop
                        and self._ready
                        and (len(self._ready) >= READ_AHEAD_CHUNKS or self._ready_bytes >= READ_AHEAD_BYTES)
                    ):
                        self._cond.wait()
                    if self._stop:
                        return
                if self._cancel.is_set():
                    return  # the reader raises Interrupted
                try:
                    chunk = next(it)
                except BaseException as e:  # noqa: BLE001 - handed to the reader, in order
                    with self._cond:
                        self._end = e
                        self._cond.notify_all()
                    return
                if not chunk:
                    continue
                with self._cond:
                    self._ready.append(chunk)  # type: ignore[arg-type]
                    self._ready_bytes += len(chunk)
                    self._cond.notify_all()
        finally:
            self._close_source()

    def _close_source(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                log.debug("closing an artifact's chunks failed", exc_info=True)

    def stop(self) -> None:
        """Ask the thread to end and drop what it read ahead (does not wait)."""
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._ready_bytes = 0
            self._free.clear()
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; True when it has (or never started)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close_inline(self) -> None:
        """Close the source's iterator when no thread ever took it over."""
        if self._thread is None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
