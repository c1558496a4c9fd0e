"""The request rate toward one Chorus tenant: a shared limiter that slows down when the tenant
answers 429 and speeds up again, slowly, once requests go through.

Chorus documents no rate limit; the one figure seen in public code is 10 requests a minute. So
the configured ``requests_per_second`` is a ceiling, not a promise: every 429 halves the rate (down
to ``min_requests_per_second``), and after ``RECOVER_AFTER`` answers in a row without a 429 it
grows by a quarter, up to the ceiling again (additive-increase would take hours from 0.1/s).
The rate is cut at most once per round of requests (``1 / rate`` seconds, at least half a
second): the 429s of requests already on their way when the first came back are one signal.

``requests_per_second = "auto"`` (:class:`AutoPacing`) finds the tenant's limit instead, with the
core's :class:`portshift.AutoRate`, and starts from the rate the last run against the same
``base_url`` found (kept in the job state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from portshift import AutoPacer, RateLimiter

log = logging.getLogger("portshift.chorus")

RECOVER_AFTER = 50  #: answers without a 429 before the rate grows again


class AdaptiveRate:
    """Owns a :class:`portshift.RateLimiter` and moves its rate between a floor and a ceiling."""

    def __init__(self, ceiling: float, floor: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = float(ceiling)
        self.floor = min(float(floor), self.ceiling)
        self.limiter = RateLimiter(ceiling, burst=burst)
        self._lock = threading.Lock()
        self._ok = 0
        self._clock = clock
        self._last_cut = float("-inf")

    @property
    def rate(self) -> float:
        return self.limiter.rate

    def acquire(self, cancel: threading.Event | None) -> float:
        """Wait for the limiter; returns when the request goes out (the clock's time)."""
        self.limiter.acquire(cancel)
        return self._clock()

    def status(self) -> str:
        rate = self.limiter.rate
        return f"API {rate:.3g} req/s (slowed by 429s)" if 0 < rate < self.ceiling else ""

    def throttled(self, sent_at: float = 0.0) -> None:
        """The tenant answered 429: halve the rate, not below the floor. A limiter switched off
        (``requests_per_second = 0``) stays off: the 429's pause still holds every thread."""
        if self.ceiling <= 0:
            return
        with self._lock:
            self._ok = 0
            current = self.limiter.rate
            now = self._clock()
            if now - self._last_cut < max(0.5, 1.0 / current):
                return  # the same round of requests: already cut
            new = max(self.floor, current / 2)
            if new < current:
                self._last_cut = now
                self.limiter.set_rate(new)
                log.info("Chorus answered 429: slowing down to %.3g requests/s", new)

    def succeeded(self, sent_at: float = 0.0) -> None:
        """An answer that was not a 429: after enough of them, speed up toward the ceiling."""
        if self.limiter.rate >= self.ceiling:  # the common case, without the lock
            return
        with self._lock:
            self._ok += 1
            if self._ok < RECOVER_AFTER:
                return
            self._ok = 0
            self.limiter.set_rate(min(self.ceiling, self.limiter.rate * 1.25))


class AutoPacing(AutoPacer):
    """``requests_per_second = "auto"``: the core's :class:`portshift.AutoPacer` (an
    :class:`~portshift.AutoRate` deciding, a :class:`~portshift.RateLimiter` pacing, one search
    for every worker of the job)."""
