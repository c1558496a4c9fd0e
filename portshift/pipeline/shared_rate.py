"""The source's request budget, shared by every worker of a job through the job state: the
configured ceiling holds for all of them together, and a pause after a 429 (``Retry-After``)
stops them all. Each request reserves its slot with one atomic update (GCRA: the next
"theoretical arrival time"), so no worker polls and none can take another's slot."""

from __future__ import annotations

import logging
import time

from ..state import State

log = logging.getLogger("portshift.run")

#: with no ceiling (``rate <= 0``) only a pause holds: a look at the shared pause is trusted this
#: long (seconds), instead of a read of the state before every request
PAUSE_LOOK = 0.1


class StateRate:
    """A :class:`portshift.retry.SharedRate` kept in the state under ``key``."""

    def __init__(self, state: State, key: str) -> None:
        self.state = state
        self.key = key
        self._paused_until = 0.0  #: (wall clock) the shared pause as last seen, or set here
        self._looked_at = float("-inf")  #: (monotonic) when the state was last read for it

    def reserve(self, rate: float, burst: float) -> tuple[float, float]:
        if rate > 0:
            return self.state.reserve_request(self.key, rate, burst)
        now = time.monotonic()
        if now - self._looked_at >= PAUSE_LOOK:
            wait, _ = self.state.reserve_request(self.key, rate, burst)
            self._paused_until, self._looked_at = time.time() + wait, now
        return max(0.0, self._paused_until - time.time()), rate

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.time() + seconds)
        try:
            self.state.pause_requests(self.key, seconds)
        except Exception as e:  # noqa: BLE001 - this worker pauses anyway; the others see the next 429
            log.warning("could not share a pause with the other workers: %s", type(e).__name__)

    def set_rate(self, rate: float) -> None:
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
