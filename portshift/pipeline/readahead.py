"""Read-ahead: a large artifact's chunks received by a thread of their own while the sink's thread
hashes and writes them (receiving, SHA-256 and writing each release the GIL, so they overlap)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

from ..errors import Interrupted

log = logging.getLogger("portshift.run")

#: artifacts declared at least this large are read ahead from their first byte; those of unknown
#: size once this much has passed (most are small documents, which a thread would only slow down)
READ_AHEAD_FROM = 8 * 1024 * 1024
READ_AHEAD_CHUNKS = 4  #: chunks held ready for the sink, at most ...
READ_AHEAD_BYTES = 16 * 1024 * 1024  #: ... and at most this many bytes (at least one chunk)
_POLL = 0.2  #: seconds between checks of the cancel event while waiting


class ReadAhead:
    """The source's chunks, received by a thread of their own while the sink hashes and writes.

    Receiving (TLS decryption), SHA-256 and writing each release the GIL, so they overlap instead
    of running one after another in the sink's thread. The thread is at most
    ``READ_AHEAD_CHUNKS`` chunks (and ``READ_AHEAD_BYTES``) ahead. An exception in the source
    reaches the reader unchanged, in order, after the chunks before it. ``close()`` (always
    called) stops the thread: it finishes the chunk it is receiving, closes the source's iterator
    in its own thread (a generator cannot be closed from another thread while it runs) and ends.
    A cancel (SIGINT/SIGTERM) is noticed within ``_POLL`` seconds even while the source is silent.
    """

    def __init__(self, chunks: Iterable[bytes], cancel: threading.Event, *, start_after: int = 0) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._cancel = cancel
        self._start_after = start_after  #: bytes passed through inline before the thread starts
        self._passed = 0
        self._cond = threading.Condition()
        self._ready: list[bytes] = []  #: FIFO, at most READ_AHEAD_CHUNKS long
        self._ready_bytes = 0
        self._end: BaseException | None = None  #: StopIteration, or what the source raised
        self._stop = False
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._thread is None:
            if self._stop:
                raise StopIteration
            if self._passed < self._start_after:
                chunk = next(self._it)
                self._passed += len(chunk)
                return chunk
            self._thread = threading.Thread(
                target=self._produce, name=f"{threading.current_thread().name}-read-ahead", daemon=True
            )
            self._thread.start()
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
            chunk = self._ready.pop(0)
            self._ready_bytes -= len(chunk)
            self._cond.notify_all()
            return chunk

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
                    self._ready.append(chunk)
                    self._ready_bytes += len(chunk)
                    self._cond.notify_all()
        finally:
            close = getattr(it, "close", None)
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
