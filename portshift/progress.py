"""Progress on long work: a live status line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO

log = logging.getLogger("portshift.progress")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Counts files, bytes and recordings; renders them every ``interval`` seconds."""

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0
        self.listed_count = 0
        self.listed_bytes = 0  #: sizes the listing told (0 when the source does not tell them)
        self.finished = {"done": 0, "already": 0, "skipped": 0, "pending": 0, "failed": 0}
        self.listing_complete = False
        self.job_finished = 0  #: recordings of the job finished by every worker together (from the state)
        self.job_listed = 0  #: and listed by whichever worker lists
        self.listing_now = ""  #: what the source says it is listing now
        self.stopped = False  #: interrupted: no ETA any more
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_len = 0

    # counters (thread-safe)
    def add_bytes(self, chunk: bytes) -> None:
        with self._lock:
            self.bytes += len(chunk)

    def file_done(self, size: int) -> None:
        with self._lock:
            self.files += 1

    def listed(self, size: int | None = None) -> None:
        with self._lock:
            self.listed_count += 1
            self.listed_bytes += size or 0

    def listing(self, text: str) -> None:
        """The source says what it is listing now (a date range, a page)."""
        with self._lock:
            self.listing_now = text
        log.debug("listing %s", text)

    def recording_finished(self, how: str) -> None:
        with self._lock:
            self.finished[how] = self.finished.get(how, 0) + 1

    def job_counts(self, listed: int, finished: int, listing_complete: bool) -> None:
        """What every worker of the job together did (a worker that does not list learns the
        totals from the state)."""
        with self._lock:
            self.job_listed, self.job_finished = listed, finished
            if listing_complete:
                self.listing_complete = True

    def listing_done(self) -> None:
        self.listing_complete = True
        self.listing_now = ""

    # rendering
    def line(self) -> str:
        with self._lock:
            elapsed = max(1e-6, time.monotonic() - self._started)
            rate = self.bytes / elapsed
            total = max(self.listed_count, self.job_listed)
            finished = max(sum(self.finished.values()), self.job_finished)
            text = (
                f"recordings {finished}/{total}{'' if self.listing_complete else '+'} · files {self.files} · "
                f"{human_bytes(self.bytes)} · {human_bytes(rate)}/s"
            )
            if not self.listing_complete and self.listing_now:
                text = f"listing {self.listing_now} · " + text
            if self.finished["skipped"] or self.finished["failed"] or self.finished["pending"]:
                text += f" · skipped {self.finished['skipped']} · pending {self.finished['pending']}"
                text += f" · failed {self.finished['failed']}"
            if self.stopped:
                return text + " · stopped"
            eta = self._eta(elapsed, total, finished)
            if eta is not None:
                text += f" · ETA {human_duration(eta)}"
            return text

    def _eta(self, elapsed: float, total: int, finished: int) -> float | None:
        """From calls and, when the listing told sizes, from bytes: the later of the two."""
        todo = total - finished - self.finished["already"]
        worked = finished - self.finished["already"]
        if not self.listing_complete or worked <= 0 or todo <= 0:
            return None
        by_calls = elapsed / worked * todo
        if self.listed_bytes and self.bytes:
            left = max(0, self.listed_bytes - self.bytes)
            return max(by_calls, left / (self.bytes / elapsed))
        return by_calls

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._render()

    def _render(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.stream.flush()
            self._last_len = len(text)
        else:
            log.info("progress: %s", text)

    def start(self) -> None:
        self._started = time.monotonic()
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def stop(self, interrupted: bool = False) -> None:
        self.stopped = self.stopped or interrupted
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._render(final=True)
