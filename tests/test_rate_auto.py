"""The core's AutoRate in virtual time against a token-bucket server (the same model as the Chorus
simulator's hidden limit): minutes of traffic in milliseconds, so the long-run figures of issue 19
are checked at every commit; benchmarks/chorus_auto_rate.py measures them in real time over HTTPS."""

from __future__ import annotations

import math

import pytest

from portshift import rate_auto
from portshift.rate_auto import AutoRate


def drive(
    limit: float, seconds: float, halve_at: float | None = None, retry_after: bool = True, kind: type[AutoRate] = AutoRate
) -> tuple[float, float, AutoRate, list[float]]:
    """A client always wanting more than its rate: accepted/L and 429s per minute from 60 s on,
    the AutoRate (of class ``kind``), and the times of every 429."""
    now = [0.0]
    auto = kind(1.0, floor=0.1, clock=lambda: now[0])
    tokens, last, t, paused = 2.0, 0.0, 0.0, 0.0
    share = refused = 0.0
    refusals: list[float] = []
    while t < seconds:
        lim = limit / 2 if halve_at is not None and t >= halve_at else limit
        t = max(t + 1.0 / auto.rate, paused)
        now[0] = t
        auto.acquired(1.0)
        tokens, last = min(2.0, tokens + (t - last) * lim), t
        now[0] = t + 0.005
        if tokens >= 1:
            tokens -= 1
            share += 1 / lim if t >= 60 else 0
            auto.succeeded(t)
        else:
            refused += 1 if t >= 60 else 0
            refusals.append(t)
            paused = t + 0.005 + (max(1, math.ceil((1 - tokens) / lim)) if retry_after else 0.75)
            auto.throttled(t)
    span = seconds - 60
    return share / span, refused / (span / 60), auto, refusals


@pytest.mark.parametrize("limit", [1, 5, 20, 50])
def test_auto_finds_a_hidden_limit_and_holds_it_with_few_429s(limit: float) -> None:
    achieved, per_minute, auto, _ = drive(limit, 600)
    assert achieved >= 0.9, achieved
    assert per_minute <= 1.0, per_minute
    assert auto.found is not None and 0.9 * limit <= auto.found <= 1.2 * limit


@pytest.mark.parametrize("limit", [5, 20, 50])
@pytest.mark.parametrize("halve_at", [100, 150, 230])
def test_a_limit_that_halves_is_followed_in_one_step(limit: float, halve_at: float) -> None:
    """Wherever in its cycle the limit halves, the first 429 after it puts the rate under the new
    limit: no 429 follows within 5 s of another (each time above the limit ends at its first 429)."""
    seen: list[tuple[float, float]] = []  # (time, rate) after every cut

    class Watched(AutoRate):
        def throttled(self, sent_at: float) -> bool:
            cut = super().throttled(sent_at)
            if cut:
                seen.append((sent_at, self.rate))
            return cut

    achieved, per_minute, auto, refusals = drive(limit, 480, halve_at=halve_at, kind=Watched)
    after = [t for t in refusals if t >= halve_at]
    assert after, "the halving was never noticed"
    assert all(b - a >= 5.0 for a, b in zip(after, after[1:])), after[:6]
    first = next(rate for t, rate in seen if t >= halve_at)
    assert first <= limit / 2, f"the first cut after the halving left the rate at {first:.2f}, limit {limit / 2}"
    assert auto.rate <= limit / 2 * 1.05 and auto.found is not None and auto.found <= limit / 2 * 1.2
    assert achieved >= 0.9, achieved


def busy_round(auto: AutoRate, now: list[float], seconds: float) -> None:
    """A round of requests the limiter held back, all answered, ``seconds`` long."""
    for _ in range(20):
        auto.acquired(0.01)
    now[0] += seconds
    auto.succeeded(now[0])


def test_a_429_halves_the_rate_holds_it_then_climbs_back() -> None:
    now = [10.0]
    auto = AutoRate(clock=lambda: now[0])
    auto.resume(8.0)
    sent = now[0]
    now[0] += 0.01
    assert auto.throttled(sent)
    assert auto.found == pytest.approx(8.0 * rate_auto.FOUND_MARGIN)  # that rate was over the limit
    half = auto.found * rate_auto.CUT
    assert auto.rate == pytest.approx(half)
    assert not auto.throttled(sent) and auto.rate == pytest.approx(half)  # on its way before the cut: one signal

    busy_round(auto, now, rate_auto.HOLD - 1.0)
    assert auto.rate == pytest.approx(half)  # held
    busy_round(auto, now, rate_auto.CLIMB_ROUND + 0.01)
    assert auto.rate == pytest.approx(half * rate_auto.CLIMB)
    busy_round(auto, now, rate_auto.CLIMB_ROUND + 0.01)
    assert auto.rate == pytest.approx(half * rate_auto.CLIMB**2)
    busy_round(auto, now, rate_auto.CLIMB_ROUND + 0.01)  # the curve, just under the limit found, is nearer than another step
    found = 8.0 * rate_auto.FOUND_MARGIN
    assert found * (1 - rate_auto.DEPTH) <= auto.rate <= found * (1 - rate_auto.DEPTH) * 1.02


def test_a_429_while_climbing_back_finds_the_limit_from_below_without_a_second_deep_cut() -> None:
    now = [10.0]
    auto = AutoRate(clock=lambda: now[0])
    auto.resume(20.0)
    now[0] += 0.01
    assert auto.throttled(now[0]) and auto.rate == pytest.approx(10.0 * rate_auto.FOUND_MARGIN)
    for _ in range(2):
        busy_round(auto, now, rate_auto.HOLD)
    clean = 10.0 * rate_auto.FOUND_MARGIN
    assert auto.rate == pytest.approx(clean * rate_auto.CLIMB)  # one clean climbing round, then up
    now[0] += 0.5
    assert auto.throttled(now[0])
    assert auto.found == pytest.approx(clean)  # the last clean rate
    assert auto.rate == pytest.approx(clean * rate_auto.UNDER)


def test_the_429_that_probes_past_a_limit_found_from_below_is_no_deep_cut() -> None:
    now = [10.0]
    auto = AutoRate(clock=lambda: now[0])
    auto.resume(20.0)
    now[0] += 0.01
    assert auto.throttled(now[0])
    for _ in range(3):  # held, then two clean climbing rounds, then a 429: found from below
        busy_round(auto, now, rate_auto.HOLD)
    now[0] += 0.5
    assert auto.throttled(now[0])
    below = auto.found
    assert below is not None
    for _ in range(20):  # the curve looks past it within PLATEAU_BELOW seconds
        busy_round(auto, now, 1.01)
    probing = auto.rate
    assert probing > below
    before_last = auto._trusted  # the rate before the last clean round
    assert below < before_last < probing
    now[0] += 0.1
    assert auto.throttled(now[0])  # this rate is just over the limit: just under it, not half
    # the limit found (where the curve stays) just under the rate before the last round, which may be over it too
    assert auto.found == pytest.approx(min(probing * rate_auto.FOUND_MARGIN, before_last) * rate_auto.UNDER)
    assert auto.rate == pytest.approx(auto.found) and auto.rate < before_last
    now[0] += 30.0
    assert auto.throttled(now[0]) and auto.rate < probing * 0.5  # and the next 429 halves again


def test_a_second_429_during_the_hold_cuts_again() -> None:
    now = [10.0]
    auto = AutoRate(clock=lambda: now[0])
    auto.resume(16.0)
    now[0] += 0.01
    assert auto.throttled(now[0]) and auto.rate == pytest.approx(8.0 * rate_auto.FOUND_MARGIN)
    now[0] += 1.5  # still holding: the limit fell by more than half
    assert auto.throttled(now[0]) and auto.rate == pytest.approx(4.0 * rate_auto.FOUND_MARGIN**2)
