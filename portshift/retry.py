"""Retries with exponential backoff and full jitter, ``Retry-After`` parsing, and a rate limiter."""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

T = TypeVar("T")


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


@dataclass
class Backoff:
    """Exponential backoff with jitter: retry n waits between half and all of
    ``min(cap, base * 2**(n-1))`` seconds; a server's hint (``Retry-After``) is used as given."""

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 5  #: total attempts, the first one included
    rng: random.Random | None = None

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Delay before retry number ``attempt`` (1 for the first retry); a server hint wins."""
        if hint is not None:
            return hint
        ceiling = min(self.cap, self.base * (2 ** min(max(attempt - 1, 0), 62)))
        return (self.rng or random).uniform(ceiling / 2, ceiling)


class RateLimiter:
    """A token bucket shared by threads: at most ``rate`` acquisitions per second on average,
    bursts up to ``burst``. ``rate <= 0`` disables limiting."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Stop everyone for ``seconds`` (e.g. after a 429 with ``Retry-After``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._tokens = 0.0

    def acquire(self) -> float:
        """Block until a request may be sent; returns the time waited."""
        waited = 0.0
        if self.rate <= 0:  # no ceiling, but a pause (a 429's Retry-After) still holds everyone
            while True:
                with self._lock:
                    wait = self._paused_until - self._clock()
                if wait <= 0:
                    return waited
                time.sleep(wait)
                waited += wait
        while True:
            with self._lock:
                now = self._clock()
                if now < self._paused_until:
                    wait = self._paused_until - now
                else:
                    self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                    self._last = now
                    if self._tokens >= 1.0:
                        self._tokens -= 1.0
                        return waited
                    wait = (1.0 - self._tokens) / self.rate
            time.sleep(wait)
            waited += wait


def call_with_retries(
    fn: Callable[[], T],
    *,
    backoff: Backoff,
    should_retry: Callable[[BaseException], bool],
    hint: Callable[[BaseException], float | None] = lambda e: None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying what ``should_retry`` allows, ``backoff.attempts``
    attempts in all. The last error is re-raised."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - re-raised below unless retryable
            if attempt >= backoff.attempts or not should_retry(e):
                raise
            delay = backoff.delay(attempt, hint(e))
            if on_retry:
                on_retry(attempt, e, delay)
            sleep(delay)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
