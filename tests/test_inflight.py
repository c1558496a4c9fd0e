"""portshift.InFlight: at most ``limit`` calls running, errors surface at the next submit or at
finish, close waits for every call handed over."""

from __future__ import annotations

import threading
import time

import pytest

from portshift import InFlight


def test_never_more_than_limit_running_and_all_results_kept() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return n

    with InFlight[int](3, "test-inflight") as inflight:
        for n in range(12):
            inflight.submit(work, n)
            assert len(inflight._pending) <= 3
        assert sorted(inflight.finish()) == list(range(12))
    assert peak[0] == 3


def test_a_failure_is_raised_by_the_next_submit_and_close_waits_for_the_others() -> None:
    finished: list[int] = []
    started, release = threading.Event(), threading.Event()

    def work(n: int) -> int:
        if n == 0:
            started.wait(5)  # fail only once call 1 is running
            raise ValueError("part 0 refused")
        started.set()
        release.wait(5)
        finished.append(n)
        return n

    inflight: InFlight[int] = InFlight(2, "test-inflight")
    inflight.submit(work, 0)
    inflight.submit(work, 1)
    with pytest.raises(ValueError, match="part 0 refused"):
        inflight.submit(work, 2)  # two running: waits for one, which failed
    assert finished == []
    release.set()
    inflight.close()
    assert finished == [1]  # the call in flight ended before close() returned; call 2 never ran


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        InFlight(0, "x")
