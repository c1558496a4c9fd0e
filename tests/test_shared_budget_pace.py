"""The request budget the workers of a job share (portshift/retry.py ``RateLimiter`` over
portshift/pipeline/shared_rate.py ``StateRate``, one real SQLite state opened twice as two
processes would): a change of pace made by another worker reaches the requests already waiting
within about a second, both ways: a faster pace is not held back by slots queued at the old one,
and after a cut no request goes out at the old pace."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portshift.errors import Interrupted
from portshift.pipeline.shared_rate import BUDGET_LOOK, StateRate
from portshift.retry import SLOT_AHEAD, RateLimiter
from portshift.state import State

KEY = "source:J"


@pytest.fixture
def states(tmp_path: Path) -> Iterator[tuple[State, State]]:
    path = tmp_path / "state.db"
    with State.open(path) as mine, State.open(path) as theirs:
        yield mine, theirs


def run_requests(limiter: RateLimiter, threads: int, seconds: float) -> list[float]:
    """``threads`` threads sending through ``limiter`` for ``seconds``: when each request went out."""
    sent: list[float] = []
    stop = time.monotonic() + seconds
    cancel = threading.Event()

    def loop() -> None:
        try:
            while time.monotonic() < stop:
                limiter.acquire(cancel)
                sent.append(time.monotonic())
        except Interrupted:
            pass

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    cancel.set()  # a request still waiting for its slot ends its wait
    for w in workers:
        w.join(5)
    return sorted(t for t in sent if t < stop)


def test_a_faster_pace_set_by_another_worker_reaches_waiting_requests_within_a_second(states: tuple[State, State]) -> None:
    mine, theirs = states
    limiter = RateLimiter(2.0)
    limiter.share(StateRate(mine, KEY))
    started = time.monotonic()
    timer = threading.Timer(2.0, lambda: StateRate(theirs, KEY).set_rate(20.0))  # the leader, in another process
    timer.start()
    sent = run_requests(limiter, threads=12, seconds=5.0)
    timer.join()
    changed = started + 2.0
    before = [t for t in sent if t < changed]
    assert len(before) <= 2 * 2.0 + 2  # 12 threads waiting at 2 requests/s: the pace held
    # slots queued at 2/s would have held the 12 threads back for 6 s; at most ~1 s now
    after = [t for t in sent if changed + SLOT_AHEAD + 2 * BUDGET_LOOK <= t]
    span = sent[-1] - (changed + SLOT_AHEAD + 2 * BUDGET_LOOK)
    assert span > 1.0 and len(after) / span >= 0.8 * 20, (len(after), span)


def test_after_a_cut_by_another_worker_the_waiting_requests_pause_and_slow_down(states: tuple[State, State]) -> None:
    mine, theirs = states
    limiter = RateLimiter(20.0)
    limiter.share(StateRate(mine, KEY))
    started = time.monotonic()

    def cut() -> None:  # a follower's 429 with Retry-After: 1 s: everyone pauses, then a quarter of the pace
        theirs_rate = StateRate(theirs, KEY)
        theirs_rate.pause(1.0)
        assert theirs_rate.throttle(time.time(), 0.25) is not None

    timer = threading.Timer(1.5, cut)
    timer.start()
    sent = run_requests(limiter, threads=12, seconds=5.0)
    timer.join()
    cut_at = started + 1.5
    assert len([t for t in sent if t < cut_at]) >= 0.8 * 20 * 1.5  # the old pace before it
    settled = cut_at + 2 * BUDGET_LOOK + 0.1  # one look late at most
    assert [t for t in sent if settled <= t < cut_at + 1.0] == []  # the pause holds the requests already waiting
    after = [t for t in sent if t >= settled]
    span = started + 5.0 - settled
    assert len(after) <= 5.0 * span + 2, (len(after), span)  # 5 requests/s now, not 20
