"""``cancellable`` / ``cancellable_all``: plugin calls in threads of their own that a stop request
ends at once; independent calls (the start-up checks of the source and the sink) at the same time."""

from __future__ import annotations

import threading

import pytest

from portshift.errors import ConfigError, Interrupted
from portshift.pipeline.recovery import cancellable, cancellable_all


def test_independent_calls_run_at_the_same_time_and_give_their_results_in_order() -> None:
    both = threading.Barrier(2, timeout=5)  # each call waits for the other: only concurrent calls pass

    def first() -> str:
        both.wait()
        return "sink ok"

    def second() -> int:
        both.wait()
        return 2

    assert cancellable_all([(first, "checking the sink"), (second, "checking the source")], threading.Event()) == ["sink ok", 2]


def test_the_first_failure_in_order_is_raised_once_all_ended() -> None:
    ended: list[str] = []
    second_failed = threading.Event()

    def sink() -> None:
        second_failed.wait(5)  # fails after the source did
        ended.append("sink")
        raise ConfigError("the bucket does not exist")

    def source() -> None:
        ended.append("source")
        second_failed.set()
        raise ValueError("the token was refused")

    with pytest.raises(ConfigError, match="bucket"):
        cancellable_all([(sink, "checking the sink"), (source, "checking the source")], threading.Event())
    assert sorted(ended) == ["sink", "source"]


def test_a_stop_request_ends_the_wait_for_a_blocked_call() -> None:
    cancel = threading.Event()
    release = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    try:
        with pytest.raises(Interrupted, match="checking the source"):
            cancellable_all([(lambda: None, "checking the sink"), (lambda: release.wait(10), "checking the source")], cancel)
    finally:
        release.set()
    assert cancellable(lambda: 7, threading.Event(), "a call") == 7
