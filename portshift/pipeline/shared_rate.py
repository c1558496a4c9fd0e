"""The source's request budget, shared by every worker of a job through the job state: the
configured ceiling holds for all of them together, and a pause after a 429 (``Retry-After``)
stops them all. Each request reserves its slot with one atomic update (GCRA: the next
"theoretical arrival time"), so no worker polls and none can take another's slot."""

from __future__ import annotations

import logging
import threading
import time

from ..state import State

log = logging.getLogger("portshift.run")

#: with no ceiling (``rate <= 0``) only a pause holds: a look at the shared pause is trusted this
#: long (seconds), instead of a read of the state before every request
PAUSE_LOOK = 0.1
#: a look at the budget's rate and last cut (for the requests waiting for their slots) is trusted
#: this long (seconds): one read per process, however many of its threads wait
BUDGET_LOOK = 0.25
#: a 429 to a request sent less than this long after a cut is of the same burst (the requests
#: that went out before their process saw the cut: at most one look late)
SAME_BURST = 2 * BUDGET_LOOK


class StateRate:
    """A :class:`portshift.retry.SharedRate` kept in the state under ``key``."""

    def __init__(self, state: State, key: str) -> None:
        self.state = state
        self.key = key
        self._paused_until = 0.0  #: (wall clock) the shared pause as last seen, or set here
        self._looked_at = float("-inf")  #: (monotonic) when the state was last read for it
        self.cut_at = 0.0  #: (wall clock) the budget's last cut after a 429, as last seen (0: none)
        self._rate_seen = 0.0  #: the budget's rate at the last look
        self._budget_looked_at = float("-inf")  #: (monotonic)
        self._look_lock = threading.Lock()

    def reserve(self, rate: float, burst: float) -> tuple[float, float]:
        if rate > 0:
            wait, shared, cut_at = self.state.reserve_request(self.key, rate, burst)
            self._rate_seen, self.cut_at = shared, max(self.cut_at, cut_at)  # fresher than the last look
            return wait, shared
        now = time.monotonic()
        if now - self._looked_at >= PAUSE_LOOK:
            wait, _, cut_at = self.state.reserve_request(self.key, rate, burst)
            self._paused_until, self._looked_at, self.cut_at = time.time() + wait, now, max(self.cut_at, cut_at)
        return max(0.0, self._paused_until - time.time()), rate

    def reserve_within(self, rate: float, burst: float, ahead: float) -> tuple[float | None, float, float]:
        """:meth:`reserve`, but no slot further than ``ahead`` seconds out: (the wait, the
        budget's rate, 0), or (None, the budget's rate, seconds until it is worth asking again)."""
        if rate <= 0:  # no ceiling: only a pause, looked at every PAUSE_LOOK seconds
            wait, shared = self.reserve(rate, burst)
            return wait, shared, 0.0
        wait, shared, third = self.state.reserve_request(self.key, rate, burst, ahead)
        self._rate_seen = shared
        if wait is None:
            return None, shared, third
        self.cut_at = max(self.cut_at, third)
        return wait, shared, 0.0

    def look(self) -> tuple[float, float]:
        """The budget's rate (0: none set) and the time of its last cut, at most ``BUDGET_LOOK`` old."""
        now = time.monotonic()
        with self._look_lock:
            due = now - self._budget_looked_at >= BUDGET_LOOK
            if due:
                self._budget_looked_at = now
        if due:
            try:
                rate, cut_at = self.state.request_budget(self.key)
            except Exception as e:  # noqa: BLE001 - the reserved slots hold; the next look may work
                log.debug("could not read the request budget: %s", type(e).__name__)
            else:
                self._rate_seen, self.cut_at = rate, max(self.cut_at, cut_at)
        return self._rate_seen, self.cut_at

    def throttle(self, sent_at: float, factor: float) -> float | None:
        """A 429 to a request sent at ``sent_at`` (wall clock): the shared rate times ``factor``
        unless this burst cut it already (a cut less than ``SAME_BURST`` before the request went
        out); the time of the cut made, or None."""
        try:
            cut_at = self.state.throttle_requests(self.key, sent_at - SAME_BURST, factor)
        except Exception as e:  # noqa: BLE001 - the leader cuts at its own next 429
            log.warning("could not share a cut of the rate with the other workers: %s", type(e).__name__)
            return None
        if cut_at is not None:
            self.cut_at = max(self.cut_at, cut_at)
            self._budget_looked_at = float("-inf")  # the rate it cut to: at the next look
        return cut_at

    def try_lead(self) -> bool:
        """Lead the search for the rate limit of this budget (one worker at a time; the lock is
        given up with the process, so another worker takes over from one that died)."""
        try:
            return self.state.try_lock(f"rate-lead:{self.key}")
        except Exception as e:  # noqa: BLE001 - follow, and ask again later
            log.debug("could not take the lead of the rate search: %s", type(e).__name__)
            return False

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.time() + seconds)
        try:
            self.state.pause_requests(self.key, seconds)
        except Exception as e:  # noqa: BLE001 - this worker pauses anyway; the others see the next 429
            log.warning("could not share a pause with the other workers: %s", type(e).__name__)

    def set_rate(self, rate: float) -> None:
        self._rate_seen = rate
        try:
            self.state.set_request_rate(self.key, rate)
        except Exception as e:  # noqa: BLE001 - the next change is shared again
            log.warning("could not share a rate with the other workers: %s", type(e).__name__)


def share_source_rate(source: object, state: State, key: str) -> bool:
    """Give the source's limiter (if it exposes one) the shared budget ``key``: ``source:<job id>``
    once the job is known; before that (the checks of workers starting together) one per job file."""
    limiter = getattr(source, "rate_limiter", None)
    share = getattr(limiter, "share", None)
    if share is None:
        return False
    share(StateRate(state, key))
    return True
