"""Retry-After parsing, backoff bounds, the shared rate limiter (fake clock and a short real
run checked against the limiter's own grant times), and call_with_retries."""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import portshift.retry as retry_mod
from portshift.errors import Interrupted
from portshift.retry import Attempts, Backoff, RateLimiter, call_with_retries, parse_retry_after

NOW = 1_700_000_000.0


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    "value, expect",
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", None),
        ("00", None),
        ("1", 1.0),
        ("120", 120.0),
        (" 30 ", 30.0),
        ("600", 600.0),
        ("601", 600.0),
        ("99999999999999999999999999", 600.0),
        ("-5", None),
        ("-0", None),
        ("1.5", None),
        ("1e3", None),
        ("garbage", None),
        ("NaN", None),
        ("inf", None),
        ("0x10", None),
        ("Wed, 32 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after_seconds_and_garbage(value: str | None, expect: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expect


def test_parse_retry_after_http_dates() -> None:
    assert parse_retry_after(http_date(NOW + 90), now=NOW) == pytest.approx(90, abs=1)
    assert parse_retry_after(http_date(NOW - 90), now=NOW) is None  # in the past
    assert parse_retry_after(http_date(NOW), now=NOW) is None
    assert parse_retry_after(http_date(NOW + 86400 * 365), now=NOW) == 600.0  # capped
    assert parse_retry_after(http_date(NOW + 86400), now=NOW, cap=5.0) == 5.0
    # an obsolete-format date without a zone is taken as UTC
    assert parse_retry_after(email.utils.formatdate(NOW + 60, usegmt=False).replace("-0000", ""), now=NOW) == pytest.approx(
        60, abs=1
    )
    real = parse_retry_after(http_date(time.time() + 100))  # with the real clock
    assert real is not None and 90 < real <= 100


# characters str.isdigit() accepts but int() refuses are left to the xfail test below, so that
# this property stays deterministic until that bug is fixed
_odd_digit = st.characters().filter(lambda c: not (c.isdigit() and not c.isdecimal()))


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(st.text(_odd_digit, max_size=40), st.from_regex(r"\s*[0-9]{1,30}\s*", fullmatch=True)))
@example(value="٣٠")  # Arabic-Indic digits: int() takes them
@example(value="Wed, 21 Oct 99999 07:28:00 GMT")
@example(value="Wed, 21 Oct 2015 07:28:00 +9999")
@example(value="Wed, 21 Oct 2015 07:28:00 -0000")
def test_parse_retry_after_never_raises_and_stays_within_the_cap(value: str) -> None:
    got = parse_retry_after(value, now=NOW, cap=600.0)
    assert got is None or 0 < got <= 600.0


@pytest.mark.parametrize("value", ["²", "①", "1²", "9" * 5000])
def test_parse_retry_after_on_odd_digits_and_huge_numbers(value: str) -> None:
    # a header a server sends (httpx decodes unknown bytes as latin-1: b"\xb2" is "²")
    got = parse_retry_after(value, now=NOW)
    assert got is None or 0 < got <= 600.0


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 120.0),
    attempt=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_bounds(base: float, cap: float, attempt: int, seed: int) -> None:
    b = Backoff(base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    d = b.delay(attempt)
    assert ceiling / 2 <= d <= ceiling
    assert 0 <= d <= cap


def test_backoff_grows_then_stays_at_the_cap() -> None:
    b = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    maxima = [max(b.delay(n) for _ in range(200)) for n in range(1, 9)]
    assert maxima[0] <= 0.5 and maxima[1] <= 1.0 and maxima[2] <= 2.0
    assert all(m <= 8.0 for m in maxima) and maxima[-1] > 4.0
    assert b.delay(3, hint=42.0) == 42.0  # a server hint is used as given


@pytest.mark.parametrize("attempt", [1025, 5000])
def test_backoff_delay_for_a_very_late_attempt_is_the_cap(attempt: int) -> None:
    assert 15.0 <= Backoff(base=0.5, cap=30.0).delay(attempt) <= 30.0


# --- RateLimiter ---------------------------------------------------------------------------------
class FakeTime:
    """Stands in for the ``time`` module inside portshift.retry: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        # a real clock always moves on; a float clock at 1000.0 would not move for a wait below its
        # resolution (the limiter's (1 - tokens) / rate can be ~1e-17 after rounding)
        self.now += max(seconds, 1e-6)


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window - 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("rate, burst", [(10.0, 1.0), (3.0, 5.0), (100.0, 10.0), (0.5, 1.0)])
def test_rate_limiter_never_exceeds_the_rate_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch, rate: float, burst: float) -> None:
    fake = FakeTime()
    monkeypatch.setattr(retry_mod, "time", fake)
    limiter = RateLimiter(rate, burst=burst, clock=fake.monotonic)
    grants = []
    for i in range(300):
        if i % 37 == 0:
            fake.now += 0.7  # idle gaps refill the bucket, never beyond the burst
        limiter.acquire()
        grants.append(fake.now)
    for window in (0.1, 1.0, 2.5, 10.0):
        assert _max_in_window(grants, window) <= burst + rate * window + 1e-6, window
    # and it does not wait needlessly: over the whole run, close to the rate
    span = grants[-1] - grants[0]
    assert len(grants) <= burst + rate * span + 1e-6


def test_rate_limiter_pause_stops_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(retry_mod, "time", fake)
    limiter = RateLimiter(100.0, burst=10.0, clock=fake.monotonic)
    limiter.acquire()
    start = fake.now
    limiter.pause(5.0)
    limiter.acquire()
    assert fake.now >= start + 5.0
    assert RateLimiter(0).acquire() == 0.0 and RateLimiter(-1).acquire() == 0.0


@pytest.mark.serial
def test_rate_limiter_across_threads_for_real() -> None:
    """A short real run: 4 threads, 50/s, burst 2. The grant times are read from the limiter's own
    clock calls (inside its lock), so a loaded machine can only make the run slower, never make
    the check flaky."""
    rate, burst = 50.0, 2.0
    local = threading.local()
    lock = threading.Lock()

    def clock() -> float:
        local.last = time.monotonic()
        return local.last

    limiter = RateLimiter(rate, burst=burst, clock=clock)
    grants: list[float] = []
    stop = time.monotonic() + 0.6

    def worker() -> None:
        while time.monotonic() < stop:
            limiter.acquire()
            with lock:
                grants.append(local.last)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(grants) >= 5  # it did run
    for window in (0.05, 0.2, 0.5):
        assert _max_in_window(grants, window) <= burst + rate * window + 1e-6
    span = max(grants) - min(grants)
    assert len(grants) <= burst + rate * span + 1e-6


# --- call_with_retries ---------------------------------------------------------------------------
class Flaky:
    def __init__(self, failures: list[BaseException], result: str = "done") -> None:
        self.failures = list(failures)
        self.calls = 0
        self.result = result

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def _run(
    fn: Callable[[], str],
    attempts: int = 4,
    should_retry: Callable[[BaseException], bool] = lambda e: True,
    hint: Callable[[BaseException], float | None] = lambda e: None,
) -> tuple[list[float], list[tuple[int, str, float]]]:
    slept: list[float] = []
    events: list[tuple[int, str, float]] = []
    call_with_retries(
        fn,
        backoff=Backoff(base=1.0, cap=4.0, attempts=attempts, rng=random.Random(7)),
        should_retry=should_retry,
        hint=hint,
        sleep=slept.append,
        on_retry=lambda n, e, d: events.append((n, type(e).__name__, d)),
    )
    return slept, events


def test_call_with_retries_succeeds_after_transient_failures() -> None:
    fn = Flaky([ConnectionError(), TimeoutError()])
    slept, events = _run(fn)
    assert fn.calls == 3
    assert [e[:2] for e in events] == [(1, "ConnectionError"), (2, "TimeoutError")]
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0
    assert slept == [e[2] for e in events]


def test_call_with_retries_gives_up_after_the_attempts_and_reraises_the_last_error() -> None:
    fn = Flaky([ConnectionError("1"), ConnectionError("2"), ConnectionError("3"), ConnectionError("4")])
    with pytest.raises(ConnectionError, match="3"):
        _run(fn, attempts=3)
    assert fn.calls == 3


def test_call_with_retries_does_not_retry_what_should_retry_refuses() -> None:
    fn = Flaky([PermissionError("denied"), ConnectionError()])
    with pytest.raises(PermissionError):
        _run(fn, should_retry=lambda e: not isinstance(e, PermissionError))
    assert fn.calls == 1


def test_call_with_retries_uses_the_server_hint() -> None:
    fn = Flaky([ConnectionError(), ConnectionError()])
    slept, _ = _run(fn, hint=lambda e: 12.5)
    assert slept == [12.5, 12.5] and fn.calls == 3


def test_one_attempt_means_no_retry() -> None:
    fn = Flaky([ConnectionError()])
    with pytest.raises(ConnectionError):
        _run(fn, attempts=1)
    assert fn.calls == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_and_exit_are_never_retried(exc: type[BaseException]) -> None:
    fn = Flaky([exc(), exc(), exc()])
    with pytest.raises(exc):
        _run(fn, attempts=4, should_retry=lambda e: True)  # a lenient predicate, as plugins write them
    assert fn.calls == 1


# --- cancel and budget ----------------------------------------------------------------------------
def test_a_long_backoff_ends_within_milliseconds_of_cancel() -> None:
    cancel = threading.Event()
    fn = Flaky([ConnectionError()] * 3)
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        call_with_retries(fn, backoff=Backoff(attempts=5), should_retry=lambda e: True, hint=lambda e: 60.0, cancel=cancel)
    assert time.monotonic() - started < 1.0
    assert fn.calls == 1


def test_nothing_is_retried_once_cancel_is_set() -> None:
    cancel = threading.Event()
    cancel.set()
    fn = Flaky([ConnectionError()])
    with pytest.raises(ConnectionError):
        call_with_retries(fn, backoff=Backoff(attempts=5), should_retry=lambda e: True, cancel=cancel)
    assert fn.calls == 1


def test_the_rate_limiter_wait_is_cancellable() -> None:
    limiter = RateLimiter(rate=1.0)
    limiter.pause(60.0)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        limiter.acquire(cancel)
    assert time.monotonic() - started < 1.0


def test_a_budget_keeps_retrying_past_the_attempts_until_the_waiting_adds_up() -> None:
    slept: list[float] = []
    attempts = Attempts(Backoff(base=10.0, cap=10.0, attempts=2, budget=35.0, rng=random.Random(3)), sleep=slept.append)
    error = ConnectionError("still limited")
    with pytest.raises(ConnectionError):
        while True:
            attempts.backoff(error, hint=10.0)
    # 2 attempts allowed, then waiting goes on while it stays within 35 s: 10 + 10 + 10
    assert slept == [10.0, 10.0, 10.0]
    assert attempts.count == 4 and attempts.waited == 30.0


def test_without_a_budget_the_attempts_are_the_limit() -> None:
    attempts = Attempts(Backoff(attempts=3), sleep=lambda s: None)
    with pytest.raises(KeyError):
        for _ in range(10):
            attempts.backoff(KeyError("x"))
    assert attempts.count == 3
