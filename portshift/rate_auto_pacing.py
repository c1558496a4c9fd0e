"""``requests_per_second = "auto"`` for a source: an :class:`~portshift.AutoRate` decides the rate,
a :class:`~portshift.RateLimiter` applies it, and every worker of a job shares one search.

Alone (one process, or a limiter the core did not share) the search is this process's. When the
core shares the limiter with the other workers of a job (a budget in the job state), one worker
**leads** the search (a lock in the state: taken over by another worker within ``LEAD_RETRY``
seconds when the leader ends or dies) and the others **follow**:

- every worker paces by the budget's one rate (the leader sets it);
- a 429 at a follower cuts that rate at once, for everyone, as the leader would (``CUT`` of the
  limit found, itself ``FOUND_MARGIN`` under the rate of the 429), and records the cut's time in
  the state; the 429s of requests sent before a cut cut no further (the same rule as
  :meth:`AutoRate.throttled` in one process);
- the leader learns of every cut made by a follower with its next request (the budget's row comes
  back with each reservation) and feeds it to its search as a 429 of its own: the rate after it
  is the leader's decision (the cut it would have made, or just under the limit when the limit
  was found from below), set for everyone;
- only the leader grows the rate and keeps the rate found for the next run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .rate_auto import CUT, FOUND_MARGIN, AutoRate
from .retry import RateLimiter

__all__ = ["AutoPacer"]

log = logging.getLogger("portshift.rate")

LEAD_RETRY = 2.0  #: seconds between a follower's attempts to take the lead (the leader may be gone)


class AutoPacer:
    """The pacing of one source location under ``requests_per_second = "auto"``."""

    def __init__(self, floor: float, burst: int = 1, start: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiter(start, burst=burst, clock=clock)
        self.auto = AutoRate(start, floor=floor, clock=clock)
        self.auto.on_change = self._changed
        self.limiter.on_cut = self._cut_seen
        self._clock = clock
        self._lock = threading.Lock()
        self._budget: Any = None  #: the shared budget the lead was decided for
        self._leading = True
        self._next_try = float("-inf")
        self._cuts_seen = 0.0  #: (wall clock) the budget's last cut already fed to the search

    def _changed(self, rate: float) -> None:
        self.limiter.set_rate(rate)
        log.info("request rate now %.3g requests/s (auto)", rate)

    # --- leading or following ------------------------------------------------------------------
    def leads(self) -> bool:
        """Does this process decide the rate (alone, or the leader of the job's workers)?"""
        budget = self.limiter.shared
        try_lead = getattr(budget, "try_lead", None)
        if try_lead is None:
            return True
        now = self._clock()
        with self._lock:
            if budget is not self._budget:  # a new budget (the job's, after the checks'): decide again
                self._budget, self._leading, self._next_try = budget, False, float("-inf")
                self._cuts_seen = getattr(budget, "cut_at", 0.0)
                first = True
            else:
                first = False
            if self._leading:
                return True
            if now < self._next_try:
                return False
            self._next_try = now + LEAD_RETRY
        got = bool(try_lead())
        if got:
            with self._lock:
                self._leading = True
            if not first:  # took over from a leader that ended: its rate is the limit found
                log.info("leading the rate search of the job's workers from %.3g requests/s", self.limiter.rate)
                self.auto.resume(self.limiter.rate)
        return got

    def _wall(self, at: float) -> float:
        """A time of ``clock`` on the wall clock (what other processes compare with)."""
        return time.time() - max(0.0, self._clock() - at)

    def _learn_cuts(self) -> None:
        """Feed the search the cuts the followers made since the last look (leader only)."""
        cut_at = getattr(self.limiter.shared, "cut_at", 0.0)
        with self._lock:
            if cut_at <= self._cuts_seen:
                return
            self._cuts_seen = cut_at
        self.auto.throttled(self._clock() - max(0.0, time.time() - cut_at))

    def _cut_seen(self) -> None:
        """A request of this process waiting for its slot saw a cut: the leader decides now,
        not at its next request (which waits for the cut's pause)."""
        if self._leading:
            self._learn_cuts()

    # --- the source's client calls these -------------------------------------------------------
    @property
    def rate(self) -> float:
        return self.auto.rate if self._leading else self.limiter.rate

    @property
    def found(self) -> bool:
        """Has this process found a limit it should keep for the next run (the leader's)?"""
        return self._leading and self.auto.found is not None

    def resume(self, rate: float) -> None:
        """Start from a rate a previous run found (treated as the limit found)."""
        self.auto.resume(rate)

    def acquire(self, cancel: threading.Event | None) -> float:
        """Wait for the request's slot; returns when it goes out (the clock's time)."""
        waited = self.limiter.acquire(cancel)
        if self.leads():
            self.auto.acquired(waited)
            self._learn_cuts()
        return self._clock()

    def succeeded(self, sent_at: float = 0.0) -> None:
        if self._leading:
            self._learn_cuts()  # before a round ends: a cut a follower made is not grown past
            self.auto.succeeded(sent_at)

    def throttled(self, sent_at: float = 0.0) -> None:
        """A 429 to a request sent at ``sent_at`` (the clock's time)."""
        budget = self.limiter.shared
        throttle = getattr(budget, "throttle", None)
        if throttle is None:
            self.auto.throttled(sent_at)
            return
        if self.leads():
            # marked first: the followers' 429s of this burst then cut no further
            cut_at = throttle(self._wall(sent_at), 1.0)
            if cut_at is None:  # of a burst a follower's 429 cut for already: learnt as that cut
                self._learn_cuts()
                return
            self._cuts_seen = max(self._cuts_seen, cut_at)
            self.auto.throttled(sent_at)
            return
        if throttle(self._wall(sent_at), CUT * FOUND_MARGIN) is not None:
            log.info("429: the rate of every worker cut to about %.3g requests/s", self.limiter.rate * CUT * FOUND_MARGIN)

    def status(self) -> str:
        if not self._leading:
            return f"API {self.limiter.rate:.3g} req/s (auto, set by the leading worker)"
        return f"API {self.auto.rate:.3g} req/s (auto{'' if self.auto.found is not None else ', searching'})"
