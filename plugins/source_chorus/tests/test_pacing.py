"""The adaptive request rate: halved once per round of 429s, never below the floor, regained by
a quarter after 50 answers in a row without a 429, never above the ceiling; off when the
configured ceiling is 0 (no limit)."""

from __future__ import annotations

from portshift_source_chorus.pacing import RECOVER_AFTER, AdaptiveRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_round_of_429s_halves_the_rate_once_down_to_the_floor() -> None:
    clock = Clock()
    pace = AdaptiveRate(8.0, 0.5, clock=clock)
    for _ in range(4):  # four requests in flight all answered 429: one signal
        pace.throttled()
    assert pace.rate == 4.0
    clock.now += 0.6  # the next round (1 / 4 s, at least 0.5 s)
    pace.throttled()
    assert pace.rate == 2.0
    for _ in range(10):
        clock.now += 10
        pace.throttled()
    assert pace.rate == 0.5  # the floor


def test_the_rate_is_regained_slowly_up_to_the_ceiling() -> None:
    clock = Clock()
    pace = AdaptiveRate(2.0, 0.1, clock=clock)
    pace.throttled()
    assert pace.rate == 1.0
    for _ in range(RECOVER_AFTER - 1):
        pace.succeeded()
    assert pace.rate == 1.0
    pace.succeeded()
    assert pace.rate == 1.25
    for _ in range(RECOVER_AFTER * 10):
        pace.succeeded()
    assert pace.rate == 2.0


def test_no_limit_stays_no_limit() -> None:
    pace = AdaptiveRate(0.0, 0.1, clock=Clock())
    pace.throttled()
    pace.succeeded()
    assert pace.rate == 0.0
