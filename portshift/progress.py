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
        self.finished = {"done": 0, "already": 0, "skipped": 0, "failed": 0}
        self.listing_complete = False
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

    def listed(self) -> None:
        with self._lock:
            self.listed_count += 1

    def recording_finished(self, how: str) -> None:
        with self._lock:
            self.finished[how] = self.finished.get(how, 0) + 1

    def listing_done(self) -> None:
        self.listing_complete = True

    # rendering
    def line(self) -> str:
        with self._lock:
            elapsed = max(1e-6, time.monotonic() - self._started)
            rate = self.bytes / elapsed
            total = self.listed_count
            finished = sum(self.finished.values())
            text = (
                f"recordings {finished}/{total}{'' if self.listing_complete else '+'} · files {self.files} · "
                f"{human_bytes(self.bytes)} · {human_bytes(rate)}/s"
            )
            if self.finished["skipped"] or self.finished["failed"]:
                text += f" · skipped {self.finished['skipped']} · failed {self.finished['failed']}"
            todo = total - finished
            exported = self.finished["done"] + self.finished["failed"] + self.finished["skipped"]
            if self.listing_complete and exported and todo > 0:
                eta = elapsed / exported * todo
                text += f" · ETA {human_duration(eta)}"
            return text

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

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._render(final=True)
