"""The thread of a :class:`~portshift.hashing.HashingStream` that hashes the buffers it hands to a
sink reading with ``views()``: piece by piece, in order, while the sink writes the same buffer."""

from __future__ import annotations

import threading
from collections.abc import Callable


class _Hasher:
    """SHA-256 and the observers of a buffered stream, in a thread of its own, piece by piece in
    order. A piece goes back to its source once both this thread and the sink are done with it."""

    def __init__(
        self,
        update: Callable[[memoryview], object],
        observers: list[Callable[[bytes], object]],
        release: Callable[[memoryview], None],
    ):
        self._update = update
        self._observers = observers
        self._release = release
        self._cond = threading.Condition()
        self._queue: list[list[object]] = []
        self._busy = False
        self._stop = False
        self.hashed = 0  #: bytes hashed by this thread so far
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{threading.current_thread().name}-hash", daemon=True)
        self._thread.start()

    def submit(self, view: memoryview) -> list[object]:
        piece: list[object] = [view, 2]  # the view and how many of (this thread, the sink) still use it
        with self._cond:
            self._queue.append(piece)
            self._cond.notify_all()
        return piece

    def done(self, piece: list[object]) -> None:
        with self._cond:
            piece[1] = refs = piece[1] - 1  # type: ignore[operator]
        if not refs:
            self._release(piece[0])  # type: ignore[arg-type]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                if not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    return
                piece = self._queue.pop(0)
                self._busy = True
            view: memoryview = piece[0]  # type: ignore[assignment]
            if self.error is None:
                try:
                    self._update(view)
                    for fn in self._observers:
                        fn(view)  # type: ignore[arg-type]
                except BaseException as e:  # noqa: BLE001 - raised in the sink's thread
                    self.error = e
            with self._cond:
                self.hashed += len(view)
                self._cond.notify_all()
            self.done(piece)

    def drain(self) -> None:
        """Wait until every piece submitted so far is hashed; raise what an observer raised."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()
        if self.error is not None:
            raise self.error

    def wait_for(self, n: int) -> None:
        """Wait until this thread has hashed ``n`` bytes (or failed, or ran out of pieces)."""
        with self._cond:
            while self.hashed < n and self.error is None and (self._queue or self._busy):
                self._cond.wait()

    def stop(self) -> None:
        """Hash what was submitted, then end the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
