"""Find a server's request rate limit by itself: the rate decisions of ``requests_per_second =
"auto"``, kept apart from the pacing (a :class:`portshift.RateLimiter` applies the rate).

The server's limit L is unknown, and it may change. A CUBIC-like (RFC 9438) search over the
request rate, whose every cut is deep enough to follow a limit that halves in one step:

- **Slow start** (no limit found yet): the rate doubles every round in which the limiter held
  requests back (the rate, not the work, was the bottleneck) and no request was answered 429. A
  round lasts a second, or 1.5 requests' time if longer.
- **On a 429** for a request sent after the last cut (the 429s of requests already on their way
  are one signal): ``found`` = a little under the rate then (``FOUND_MARGIN``: that rate was over
  the limit), and the rate drops to **half** of that, under the limit even if the limit just
  halved (also when the 429 came as the rate probed a little past the old limit). It stays there
  ``HOLD`` seconds (the ``Retry-After`` pause, and a clean look at the new rate), then **climbs
  back** by ``CLIMB`` per clean round (``CLIMB_ROUND``) toward the curve below.
- **A 429 while climbing back** means the limit is lower than ``found``. ``found`` becomes the
  rate before the last clean round (a small excess over a server's burst can take longer than one
  round to show; the held rate at the latest) and the rate drops just under it (``UNDER``),
  without a second deep cut; the curve then looks past ``found`` sooner (``PLATEAU_BELOW``), as
  the limit may be higher. The 429 that probe meets puts the limit found just under the rate
  before the probe's last clean round (the probe grows fast, and that rate may be a little over
  the limit too: the excess shows late), and the rate there, again without a deep cut.
- **Between 429s** the rate follows ``found * (1 - DEPTH * (1 - t/K)**3)`` over the time ``t``
  the limiter was busy since the cut: flat just under ``found`` for most of ``K`` (``PLATEAU``
  seconds), then growing ever faster past it, so a limit that went up is found again. At a steady
  limit there is about one 429 per ``PLATEAU`` seconds, each costing the half-rate ``HOLD`` and
  the climb: about 0.93-0.95 L on average in the virtual-time model of tests/test_rate_auto.py.

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

CUT = 0.5  #: the rate after a 429, as a share of the limit found: under a limit that halved
FOUND_MARGIN = 0.97  #: the limit found, as a share of the rate a 429 came at (it was over the limit)
HOLD = 5.0  #: seconds at the cut rate before climbing back (a second 429 sooner: the limit fell further)
CLIMB = 1.3  #: growth per clean round while climbing back to the curve after a cut
DEPTH = 0.1  #: the curve starts this far under the limit found (as a share of it)
UNDER = 0.95  #: the rate after a 429 that found the limit from below, as a share of it (no deep cut)
PLATEAU = 180.0  #: seconds of busy time from a cut until the curve passes the limit found (CUBIC's K)
PLATEAU_BELOW = 12.0  #: the same after a limit found from below (by a 429 while climbing back)
ROUND = 1.0  #: seconds per round of growth (at least ROUND_REQUESTS requests' time)
ROUND_REQUESTS = 1.5
CLIMB_ROUND = 2.0  #: seconds per round while climbing back (at least CLIMB_ROUND_REQUESTS requests' time)
CLIMB_ROUND_REQUESTS = 2.0


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
        self._plateau = PLATEAU
        self._busy = PLATEAU if found is not None else 0.0  #: busy seconds since the cut (a remembered limit: on it)
        self._climbing = False  #: climbing back after a cut, not yet on the curve
        self._hold_until = float("-inf")
        self._clean_rate = self.rate  #: the last rate a whole round went through clean while climbing
        self._trusted = self.rate  #: the rate before that (two clean rounds, or the held rate)
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
            self.found, self._busy, self._plateau, self._climbing = self.rate, PLATEAU, PLATEAU, False
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
            if self._climbing:  # long enough for a small excess to show against a server's burst
                length = max(CLIMB_ROUND, CLIMB_ROUND_REQUESTS / self.rate)
            else:
                length = max(ROUND, ROUND_REQUESTS / self.rate)
            if now - self._round_start < length:
                return
            busy = self._acquired > 0 and self._held * 4 >= self._acquired
            if busy and self._clean and now >= self._hold_until:
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
            if self._climbing and now >= self._hold_until:
                # the limit lies under this rate: just under the last rate known to be under it
                self.found = self._trusted
                self.rate = max(self.floor, self._trusted * UNDER)
                self._climbing, self._plateau = False, PLATEAU_BELOW
                self._clean_rate = self._trusted = self.rate
            elif self._plateau == PLATEAU_BELOW and self._busy <= 3 * PLATEAU_BELOW:
                # probing past a limit found from below: this rate is just over the limit, and
                # the probe grows fast: no higher than the rate before the last clean round
                # the rate before the last round may be a little over it too (the excess shows
                # late against a server's burst): the curve stays under that, at this rate
                self.found = min(self.rate * FOUND_MARGIN, self._trusted) * UNDER
                self.rate = max(self.floor, self.found)
                self._plateau = PLATEAU
                self._clean_rate = self._trusted = self.rate
            else:
                self.found = self.rate * FOUND_MARGIN
                self.rate = max(self.floor, self.found * CUT)
                self._climbing, self._plateau = True, PLATEAU
                self._hold_until = now + HOLD
                self._clean_rate = self._trusted = self.rate
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
        # this round went through clean; the one before it is trusted (a small excess over a
        # server's burst can take longer than a round to show)
        self._trusted, self._clean_rate = self._clean_rate, self.rate
        target = self.found * (1.0 - DEPTH * (1.0 - self._busy / self._plateau) ** 3)
        if self._climbing:
            if self.rate * CLIMB < target:
                target = self.rate * CLIMB
            else:
                self._climbing = False  # on the curve
        target = min(self.ceiling, max(self.floor, target))
        if target <= self.rate:
            return None
        self.rate = target
        return target

    def _tell(self, rate: float) -> None:
        if self.on_change is not None:
            self.on_change(rate)
