"""The source's request budget, shared by every worker of a job through the job state: the
configured ceiling holds for all of them together, and a pause after a 429 (``Retry-After``)
stops them all. Each request reserves its slot with one atomic update (GCRA: the next
"theoretical arrival time"), so no worker polls and none can take another's slot."""

from __future__ import annotations

import logging

from ..state import State

log = logging.getLogger("portshift.run")


class StateRate:
    """A :class:`portshift.retry.SharedRate` kept in the state under ``key``."""

    def __init__(self, state: State, key: str) -> None:
        self.state = state
        self.key = key

    def reserve(self, rate: float, burst: float) -> float:
        return self.state.reserve_request(self.key, rate, burst)

    def pause(self, seconds: float) -> None:
        try:
            self.state.pause_requests(self.key, seconds)
        except Exception as e:  # noqa: BLE001 - this worker pauses anyway; the others see the next 429
            log.warning("could not share a pause with the other workers: %s", type(e).__name__)


def share_source_rate(source: object, state: State, job_id: str) -> bool:
    """Give the source's limiter (if it exposes one) the job's shared budget."""
    limiter = getattr(source, "rate_limiter", None)
    share = getattr(limiter, "share", None)
    if share is None:
        return False
    share(StateRate(state, f"source:{job_id}"))
    return True
