"""Pieces of one artifact uploaded while the next piece is read: what the S3, Azure and GCS sinks
share to overlap sending with receiving.

The caller fills a piece (an S3 part, an Azure block, a GCS chunk) from the
:class:`~portshift.HashingStream` and hands it to :meth:`InFlight.submit`, which starts the
upload on a worker thread and returns at once unless ``limit`` uploads are already running; then
it waits for one of them to end. So at most ``limit`` pieces are in flight plus the one being
filled: memory stays at ``(limit + 1)`` pieces per transfer, whatever the artifact's size, and the
network, the source and the hashing (``ssl`` and ``hashlib`` release the GIL) run at the same time.

An upload's exception is raised by the next :meth:`~InFlight.submit` or by :meth:`~InFlight.finish`
(the first that ended, unchanged). :meth:`~InFlight.close` must always run (``with``): it waits
for every piece handed over (each has a worker of its own at once, and its own cancellable
retries), so that nothing is still sending when the caller aborts the upload.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class InFlight(Generic[T]):
    """At most ``limit`` calls running on worker threads named ``name``; results kept in the
    order the calls ended (sort them by what they carry, e.g. a part number)."""

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=name)
        self._pending: deque[Future[T]] = deque()
        self.done: list[T] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> None:
        """Start ``fn(*args)``, first waiting while ``limit`` calls are running; raises the
        exception of a call that failed."""
        self.collect()
        while len(self._pending) >= self.limit:
            finished, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            self._take(finished)
        self._pending.append(self._pool.submit(fn, *args))

    def collect(self) -> None:
        """Take the results of the calls that have ended (raises the exception of a failed one)."""
        self._take([f for f in self._pending if f.done()])

    def finish(self) -> list[T]:
        """Wait for every call; their results (raises the first exception, in submission order)."""
        while self._pending:
            self.done.append(self._pending.popleft().result())
        return self.done

    def close(self) -> None:
        """Wait for the calls handed over (there is a worker for each, so all have started)."""
        self._pool.shutdown(wait=True)

    def _take(self, finished: Any) -> None:
        for f in finished:
            self._pending.remove(f)
            self.done.append(f.result())

    def __enter__(self) -> InFlight[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["InFlight"]
