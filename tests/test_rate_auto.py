"""The core's AutoRate in virtual time against a token-bucket server (the same model as the Chorus
simulator's hidden limit): minutes of traffic in milliseconds, so the long-run figures of issue 19
are checked at every commit; benchmarks/chorus_auto_rate.py measures them in real time over HTTPS."""

from __future__ import annotations

import math

import pytest

from portshift.rate_auto import AutoRate


def drive(limit: float, seconds: float, halve_at: float | None = None, retry_after: bool = True) -> tuple[float, float, AutoRate]:
    """A client always wanting more than its rate: accepted/L and 429s per minute from 60 s on, and the AutoRate."""
    now = [0.0]
    auto = AutoRate(1.0, floor=0.1, clock=lambda: now[0])
    tokens, last, t, paused = 2.0, 0.0, 0.0, 0.0
    share = refused = 0.0
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
            paused = t + 0.005 + (max(1, math.ceil((1 - tokens) / lim)) if retry_after else 0.75)
            auto.throttled(t)
    span = seconds - 60
    return share / span, refused / (span / 60), auto


@pytest.mark.parametrize("limit", [1, 5, 20, 50])
def test_auto_finds_a_hidden_limit_and_holds_it_with_few_429s(limit: float) -> None:
    achieved, per_minute, auto = drive(limit, 600)
    assert achieved >= 0.9, achieved
    assert per_minute <= 1.0, per_minute
    assert auto.found is not None and 0.9 * limit <= auto.found <= 1.2 * limit


def test_a_limit_that_halves_is_followed_down() -> None:
    achieved, per_minute, auto = drive(20, 480, halve_at=180)
    assert auto.rate <= 10.5 and auto.found is not None and auto.found <= 12
    assert achieved >= 0.85, achieved


def test_429s_of_requests_sent_before_a_cut_are_one_signal_and_a_remembered_rate_is_resumed() -> None:
    now = [10.0]
    auto = AutoRate(clock=lambda: now[0])
    auto.resume(8.0)
    sent = now[0]
    now[0] += 0.01
    assert auto.throttled(sent) and auto.rate == pytest.approx(8.0 * 0.8)
    assert not auto.throttled(sent) and auto.rate == pytest.approx(6.4)  # on its way before the cut
    now[0] += 1.0
    assert auto.throttled(now[0])  # sent after the cut, this soon: the limit fell, cut hard
    assert auto.rate == pytest.approx(3.2)
