"""Find a server's request rate limit by itself: the rate decisions of ``requests_per_second =
"auto"``, kept apart from the pacing (a :class:`portshift.RateLimiter` applies the rate).

The server's limit L is unknown. The algorithm is CUBIC's (RFC 9438) applied to a request rate:

- **Slow start** (no limit found yet): the rate doubles every round (at least a second) in which
  the limiter held requests back (the rate, not the work, was the bottleneck) and no request
  sent in it was answered 429.
- **On a 429** for a request sent after the last cut (the 429s of requests already on their way
  are one signal): ``found`` = the rate then, the rate drops to ``found * 0.8``; in slow start,
  to half (the round before, at half the rate, was clean). A second 429 shortly after a cut
  (within ``HARD_WINDOW`` seconds: the limit fell, e.g. halved) cuts to half.
- **Between 429s** the rate follows ``found * (1 - 0.2 * (1 - t/K)**3)`` over the time ``t`` the
  limiter was busy since the cut: back near ``found`` within seconds, flat around it for about a
  minute, then growing ever faster past it (a limit that went up is found again). ``K`` is
  ``PLATEAU`` seconds: at a steady limit there is about one 429 per ``PLATEAU`` seconds, and the
  average rate is about 0.95 L. After a hard cut the rate climbs back to the curve by ``CLIMB``
  per round.

The ``Retry-After`` pause is the caller's (the limiter's :meth:`~portshift.RateLimiter.pause`):
it holds every request; this class only decides the rate after it. One instance per source
location and process; :class:`RateMemory` (the job state) keeps the rate for the next run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["AutoRate", "RateMemory"]

SOFT_CUT = 0.8  #: the rate after a 429 near the limit found, as a share of it
HARD_CUT = 0.5  #: after a 429 in slow start, or a second one right after a cut
PLATEAU = 120.0  #: seconds of busy time from a cut back to the limit found (CUBIC's K)
HARD_WINDOW = 2.5  #: a 429 this soon after a cut (seconds, at least 3 requests' time) cuts hard
CLIMB = 1.2  #: growth per round while climbing back to the curve after a hard cut
ROUND = 1.0  #: seconds (at least 3 requests' time) per round of growth


class RateMemory(Protocol):
    """Where the rate found is kept between runs (the job state implements it)."""

    def source_rate(self, key: str) -> float | None: ...

    def save_source_rate(self, key: str, rate: float) -> None: ...


class AutoRate:
    """The rate to send at, moved by what the server answers. Thread-safe; ``clock`` for tests."""

    def __init__(
        self,
        start: float = 1.0,
        *,
        floor: float = 0.1,
        ceiling: float = 1000.0,
        found: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = float(floor)
        self.ceiling = max(self.floor, float(ceiling))
        self._clock = clock
        self._lock = threading.Lock()
        self.rate = min(self.ceiling, max(self.floor, float(start)))
        #: the rate at the last 429 (None: none seen yet, slow start)
        self.found: float | None = found
        self._cut_at = float("-inf")  #: clock time of the last cut
        self._busy = PLATEAU if found is not None else 0.0  #: busy seconds since the cut (a remembered limit: on it)
        self._round_start = clock()
        self._acquired = 0
        self._held = 0
        self._clean = True
        self.throttles = 0  #: 429s counted as a signal (one per cut)
        self.on_change: Callable[[float], None] | None = None  #: told every new rate (e.g. the limiter)

    def resume(self, rate: float) -> None:
        """Start from a rate a previous run found (treated as the limit found)."""
        with self._lock:
            self.rate = min(self.ceiling, max(self.floor, float(rate)))
            self.found, self._busy = self.rate, PLATEAU
        self._tell(self.rate)

    def acquired(self, waited: float) -> None:
        """A request is about to go out; ``waited``: how long the limiter held it back."""
        with self._lock:
            self._acquired += 1
            if waited > 0:
                self._held += 1

    def succeeded(self, sent_at: float) -> None:
        """An answer that is not a 429, to a request sent at ``sent_at`` (the clock's time)."""
        now = self._clock()
        new = None
        with self._lock:
            length = max(ROUND, 3.0 / self.rate)
            if now - self._round_start < length:
                return
            busy = self._acquired > 0 and self._held * 4 >= self._acquired
            if busy and self._clean:
                new = self._grow(now - self._round_start)
            self._round_start, self._acquired, self._held, self._clean = now, 0, 0, True
        if new is not None:
            self._tell(new)

    def throttled(self, sent_at: float) -> bool:
        """The server answered 429 to a request sent at ``sent_at``; True when this cut the rate."""
        now = self._clock()
        with self._lock:
            if sent_at < self._cut_at:
                return False  # on its way before the last cut: the same signal
            self.throttles += 1
            self._clean = False
            hard = self.found is None or now - self._cut_at < max(HARD_WINDOW, 3.0 / self.rate)
            self.found = self.rate
            self.rate = max(self.floor, self.rate * (HARD_CUT if hard else SOFT_CUT))
            self._cut_at, self._busy, self._round_start = now, 0.0, now
            self._acquired = self._held = 0
            new = self.rate
        self._tell(new)
        return True

    def _grow(self, busy_seconds: float) -> float | None:
        """One clean, busy round went by (under the lock): the next rate."""
        if self.found is None:
            self.rate = min(self.ceiling, self.rate * 2)
            return self.rate
        self._busy += busy_seconds
        target = self.found * (1.0 - (1.0 - SOFT_CUT) * (1.0 - self._busy / PLATEAU) ** 3)
        if self.rate < target:  # below the curve after a hard cut: climb back to it quickly
            target = min(target, self.rate * CLIMB)
        target = min(self.ceiling, max(self.floor, target))
        if target <= self.rate:
            return None
        self.rate = target
        return target

    def _tell(self, rate: float) -> None:
        if self.on_change is not None:
            self.on_change(rate)
