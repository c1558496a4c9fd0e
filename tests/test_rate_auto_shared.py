"""``requests_per_second = "auto"`` shared by the workers of a job (portshift/rate_auto_pacing.py):
one worker leads the search, the others follow the budget's rate; a follower's 429 cuts the rate
for everyone at once and reaches the leader's search; the lead passes on when the leader ends.
Each worker is an AutoPacer on its own connection to one real SQLite state (as two processes
are); the clock of the searches is a test clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from portshift.pipeline.shared_rate import StateRate
from portshift.rate_auto import CUT, FOUND_MARGIN, HOLD
from portshift.rate_auto_pacing import LEAD_RETRY, AutoPacer
from portshift.state import State

KEY = "source:J"
START = 200.0  #: high enough that no test waits for its slot


class Clock:
    """The monotonic clock, moved on by the tests (``clock.now += seconds``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    @property
    def now(self) -> float:
        return time.monotonic() + self.offset

    @now.setter
    def now(self, value: float) -> None:
        self.offset += value - self.now

    def __call__(self) -> float:
        return self.now


def pacer(state: State, clock: Clock) -> AutoPacer:
    p = AutoPacer(floor=0.1, start=START, clock=clock)
    p.limiter.share(StateRate(state, KEY))
    return p


@pytest.fixture
def two(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "state.db"
    with State.open(path) as a_state, State.open(path) as b_state:
        clock = Clock()
        a, b = pacer(a_state, clock), pacer(b_state, clock)
        a.acquire(None)  # the first to ask leads
        b.acquire(None)
        yield a, b, clock, a_state


def test_one_worker_leads_and_the_other_follows_the_budgets_rate(two) -> None:  # type: ignore[no-untyped-def]
    a, b, clock, _ = two
    assert a.leads() and not b.leads()
    assert a.found is False and b.found is False  # nothing to keep yet; a follower never keeps one
    a.auto.on_change(150.0)  # type: ignore[misc]  # the leader sets a rate ...
    b.acquire(None)
    assert b.rate == 150.0 and "set by the leading worker" in b.status()  # ... every worker paces by it


def test_a_followers_429_cuts_the_rate_for_everyone_once_per_burst(two) -> None:  # type: ignore[no-untyped-def]
    a, b, clock, _ = two
    sent = b.acquire(None)
    b.throttled(sent)
    b.throttled(sent)  # the same burst: no second cut
    a.limiter.acquire(None)
    assert a.limiter.rate == pytest.approx(START * CUT * FOUND_MARGIN)  # at once, for the leader too
    # the leader's next request brings the cut to its search: its own decision, set for everyone
    clock.now += 0.01
    a.acquire(None)
    assert a.auto.throttles == 1 and a.auto.found == pytest.approx(START * FOUND_MARGIN)
    assert a.auto.rate == pytest.approx(START * FOUND_MARGIN * CUT)
    b.acquire(None)
    assert b.rate == pytest.approx(a.auto.rate)
    a.acquire(None)
    assert a.auto.throttles == 1  # a cut is learnt once


def test_the_leaders_429_marks_the_burst_so_a_follower_cuts_no_further(two) -> None:  # type: ignore[no-untyped-def]
    a, b, clock, _ = two
    sent_b = b.acquire(None)
    sent_a = a.acquire(None)
    a.throttled(sent_a)
    assert a.auto.throttles == 1
    b.throttled(sent_b)  # sent before the leader's cut: the same signal
    b.acquire(None)
    assert b.rate == pytest.approx(a.auto.rate)
    clock.now += HOLD / 2
    a.acquire(None)
    assert a.auto.throttles == 1  # its own cut is not learnt again


def test_the_lead_passes_to_a_follower_when_the_leader_ends(two) -> None:  # type: ignore[no-untyped-def]
    a, b, clock, a_state = two
    a.auto.on_change(120.0)  # type: ignore[misc]
    a_state.close()  # the leader's process ends: its lock is given up
    b.acquire(None)
    assert not b.leads()  # it asks again only every LEAD_RETRY seconds
    clock.now += LEAD_RETRY
    b.acquire(None)
    assert b.leads() and b.auto.found == pytest.approx(120.0) and b.found  # from the budget's rate, as the limit found


def test_alone_the_search_is_this_processs() -> None:
    clock = Clock()
    p = AutoPacer(floor=0.1, start=5.0, clock=clock)
    assert p.leads()
    p.throttled(p.acquire(None))
    assert p.auto.throttles == 1 and p.rate == pytest.approx(5.0 * FOUND_MARGIN * CUT)


def test_the_leader_decides_as_soon_as_a_waiting_request_of_its_own_sees_a_followers_cut(two) -> None:  # type: ignore[no-untyped-def]
    import threading

    a, b, clock, _ = two
    a.auto.on_change(1.0)  # type: ignore[misc]  # slow: the leader's next request waits about a second
    a.limiter.acquire(None)
    returned = threading.Event()
    waiting = threading.Thread(target=lambda: (a.acquire(None), returned.set()))
    waiting.start()
    time.sleep(0.1)
    b.limiter.pause(1.0)  # a 429 with Retry-After: 1 at the follower
    b.throttled(clock())
    deadline = time.monotonic() + 0.8
    while a.auto.throttles == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.auto.throttles == 1 and not returned.is_set()  # decided while its own request still waits
    waiting.join(5)
