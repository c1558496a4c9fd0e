"""One way to retry: exponential backoff with full jitter, ``Retry-After``, a cap, a time budget
and a cancel event; plus the request-rate limiter shared by a source's threads.

Every retry loop in portshift and its plugins goes through :class:`Attempts` (a loop that needs
its own shape, such as an HTTP client that reads a ``Retry-After`` header) or
:func:`call_with_retries` (a plain call). Waiting is always ``cancel.wait``, never
``time.sleep``: SIGINT/SIGTERM stop any backoff, however long, within milliseconds.

Why not tenacity or stamina: both would do, but this module is ~150 lines that the Chorus
request path (CPU-bound, benchmarks #4) calls thousands of times a second; tenacity builds a
retry-state object per call (~10 µs) and neither knows our :class:`~portshift.errors.Interrupted`
or a shared limiter pause. The semantics are theirs: full jitter, a server hint wins, a cap.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, TypeVar

from .errors import Interrupted

T = TypeVar("T")

__all__ = ["Attempts", "Backoff", "RateLimiter", "call_with_retries", "parse_retry_after", "wait_or_interrupt"]


def parse_retry_after(value: str | None, *, now: float | None = None, cap: float = 600.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    ``None`` when there is no usable hint (missing, ``0``, negative, garbage): the caller then
    falls back to its own backoff. The result is capped at ``cap`` seconds.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        if len(value) > 12:
            return cap
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        current = now if now is not None else time.time()
        seconds = when.timestamp() - current
    if seconds <= 0:
        return None
    return min(seconds, cap)


def wait_or_interrupt(cancel: threading.Event | None, seconds: float, what: str = "waiting") -> None:
    """Sleep ``seconds``, or raise :class:`Interrupted` as soon as ``cancel`` is set."""
    if seconds <= 0:
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"interrupted while {what}")
        return
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Interrupted(f"interrupted while {what}")


@dataclass
class Backoff:
    """The retry policy: exponential backoff with jitter. Retry n waits between half and all of
    ``min(cap, base * 2**(n-1))`` seconds; a server's hint (``Retry-After``) is used as given.

    ``attempts`` counts every attempt, the first included. ``budget``, when set, lets retries go
    on past ``attempts`` while the total time spent waiting stays under it (a source that is
    rate-limited at 10 requests a minute needs minutes, not a fixed count of tries).
    """

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 5  #: total attempts, the first one included
    rng: random.Random | None = None
    budget: float | None = None  #: seconds of waiting allowed in all, past ``attempts``

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Delay before retry number ``attempt`` (1 for the first retry); a server hint wins."""
        if hint is not None:
            return hint
        ceiling = min(self.cap, self.base * (2 ** min(max(attempt - 1, 0), 62)))
        return (self.rng or random).uniform(ceiling / 2, ceiling)


class Attempts:
    """The state of one retried operation: how many attempts were made and how long was waited.

    Typical use in a loop that needs its own shape::

        attempts = Attempts(policy, cancel=self.cancel, what="list engagements")
        while True:
            try:
                return send()
            except SomeRetryableError as e:
                attempts.backoff(e, hint=retry_after)  # raises e when exhausted, Interrupted on cancel
    """

    def __init__(
        self,
        policy: Backoff,
        *,
        cancel: threading.Event | None = None,
        what: str = "retrying",
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.cancel = cancel
        self.what = what
        self.count = 1  #: the attempt under way (1 = the first)
        self.waited = 0.0
        self._sleep = sleep

    def exhausted(self, delay: float = 0.0) -> bool:
        """Would one more retry (waiting ``delay``) go past the policy?"""
        if self.count < self.policy.attempts:
            return False
        budget = self.policy.budget
        return budget is None or self.waited + delay > budget

    def next_delay(self, hint: float | None = None) -> float | None:
        """The delay before the next attempt, or ``None`` when the policy is exhausted."""
        delay = self.policy.delay(self.count, hint)
        if self.exhausted(delay):
            return None
        return delay

    def wait(self, delay: float) -> None:
        """Wait ``delay`` seconds (raising :class:`Interrupted` on cancel) and count the attempt."""
        if self._sleep is not None:
            if self.cancel is not None and self.cancel.is_set():
                raise Interrupted(f"interrupted while {self.what}")
            self._sleep(delay)
        else:
            wait_or_interrupt(self.cancel, delay, self.what)
        self.waited += delay
        self.count += 1

    def backoff(self, error: BaseException, *, hint: float | None = None) -> float:
        """Wait before the next attempt, or re-raise ``error`` when the policy is exhausted."""
        delay = self.next_delay(hint)
        if delay is None:
            raise error
        self.wait(delay)
        return delay


def call_with_retries(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    should_retry: Callable[[BaseException], bool],
    hint: Callable[[BaseException], float | None] = lambda e: None,
    cancel: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    what: str = "retrying",
) -> T:
    """Call ``fn`` until it succeeds, retrying what ``should_retry`` allows within ``backoff``.
    The last error is re-raised; a set ``cancel`` ends any wait with :class:`Interrupted`."""
    attempts = Attempts(backoff, cancel=cancel, what=what, sleep=sleep)
    while True:
        try:
            return fn()
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised below unless retryable
            if not should_retry(e) or (cancel is not None and cancel.is_set()):
                raise
            delay = attempts.next_delay(hint(e))
            if delay is None:
                raise
            if on_retry:
                on_retry(attempts.count, e, delay)
            attempts.wait(delay)


class RateLimiter:
    """A token bucket shared by threads: at most ``rate`` acquisitions per second on average,
    bursts up to ``burst``. ``rate <= 0`` disables limiting (a :meth:`pause` still holds)."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._shared: SharedRate | None = None
        #: called (by a waiting request's thread) when the shared budget was cut after a 429 elsewhere
        self.on_cut: Callable[[], None] | None = None

    def share(self, shared: SharedRate | None) -> None:
        """Pace through ``shared`` as well (the core does, for every worker of a job): each
        request reserves its slot there, and a pause stops every process sharing it."""
        self._shared = shared

    @property
    def shared(self) -> SharedRate | None:
        """The budget this limiter paces through with other processes (None: its own)."""
        return self._shared

    def pause(self, seconds: float) -> None:
        """Stop everyone for ``seconds`` (e.g. after a 429 with ``Retry-After``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._tokens = 0.0
        if self._shared is not None:
            self._shared.pause(seconds)

    def set_rate(self, rate: float) -> None:
        """Change the ceiling (an adaptive limiter lowers it after a 429): for every process
        sharing the budget too."""
        with self._lock:
            self.rate = float(rate)
        if self._shared is not None and rate > 0:
            self._shared.set_rate(rate)

    def _wait_needed(self) -> float:
        """Take a token and return 0, or return how long to wait for one (under the lock)."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self.rate <= 0:
            return 0.0
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def acquire(self, cancel: threading.Event | None = None) -> float:
        """Block until a request may be sent; returns the time waited. A set ``cancel`` ends the
        wait at once with :class:`Interrupted`."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._wait_needed() if self._shared is None else max(0.0, self._paused_until - self._clock())
            if wait <= 0:
                break
            wait_or_interrupt(cancel, wait, "waiting for the request rate limit")
            waited += wait
        if self._shared is not None:  # one slot among every process of the job: reserved, then waited for
            waited += self._wait_for_slot(cancel)
        return waited

    def _wait_for_slot(self, cancel: threading.Event | None) -> float:
        """Reserve this request's slot in the shared budget and wait for it.

        No slot is reserved more than ``SLOT_AHEAD`` seconds (or 1.5 slots) out: a request that
        would queue further waits first, so that a change of pace (a climb or a cut, made here
        or by another process) reaches every waiting request within that time. A waiting
        request looks at the budget every ``SLOT_LOOK`` seconds: a slower pace moves its slot
        later, and a slot reserved before a cut after a 429 is given up for one after the cut's
        pause, at the new pace. A pause of this process holds it too."""
        shared = self._shared
        assert shared is not None
        look = getattr(shared, "look", None)
        within = getattr(shared, "reserve_within", None)
        start = self._clock()
        while True:
            reserved_at = time.time()
            if within is not None:
                wait, rate, retry_in = within(self.rate, self.burst, max(SLOT_AHEAD, 1.5 / max(self.rate, 1e-9)))
            else:
                (wait, rate), retry_in = shared.reserve(self.rate, self.burst), 0.0
            with self._lock:
                self.rate = rate  # the budget's pace, which another process may have changed
            if wait is None:  # the queue is long: ask again when it is short enough
                wait_or_interrupt(cancel, min(max(retry_in, 0.01), SLOT_LOOK), "waiting for the request rate limit")
                continue
            slot, pace = self._clock() + wait, rate
            while True:
                now = self._clock()
                if look is not None and slot > now:
                    seen, cut_at = look()
                    if cut_at > reserved_at:
                        if self.on_cut is not None:
                            self.on_cut()
                        break  # reserved before the cut: a slot after it instead
                    if seen > 0:
                        with self._lock:
                            self.rate = seen
                with self._lock:
                    if 0 < self.rate < pace:  # slower now: the slot moves later (never earlier)
                        slot = now + max(0.0, slot - now) * pace / self.rate
                        pace = self.rate
                    slot = max(slot, self._paused_until)
                if now >= slot:
                    return now - start
                wait_or_interrupt(cancel, min(slot - now, SLOT_LOOK), "waiting for the request rate limit")


#: seconds ahead a request may reserve its slot in a shared budget (at least 1.5 slots)
SLOT_AHEAD = 1.0
#: seconds between two looks of a request waiting for its slot at the budget's pace and pause
SLOT_LOOK = 0.25


class SharedRate(Protocol):
    """A request budget several processes share (the core's lives in the job state)."""

    def reserve(self, rate: float, burst: float) -> tuple[float, float]:
        """Take the next slot (``burst`` may go at once): the seconds to wait before using it (0:
        now) and the budget's rate (``rate`` unless someone sharing it set another). ``rate <= 0``:
        no ceiling, only a pause is waited for."""
        ...

    def pause(self, seconds: float) -> None:
        """Nobody sharing the budget sends a request for ``seconds``."""
        ...

    def set_rate(self, rate: float) -> None:
        """The budget's pace from now on, for everyone sharing it."""
        ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
