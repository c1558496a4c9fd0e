"""Ctrl-C stops a Chorus export at once, whatever it is waiting for: a long ``Retry-After``, the
rate limiter's next slot (issue 14: cancel reaches every backoff; issue 23: during listing too).

A real ``portshift run`` subprocess (simulator source, local sink) receives SIGINT while it waits
and must be gone, exit code 130, within 2 s; the same at the source level, with a thread setting
the cancel event the core hands the source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from portshift_source_chorus.simulator import ChorusSimulator, Fault, Faults, Paging

from portshift import Interrupted

from .conftest import CANARY, WINDOW, make_source
from .test_end_to_end import write_job

pytestmark = pytest.mark.serial  # measures time or memory: run alone (make test's second part)


def start_run(tmp_path: Path, sim: ChorusSimulator, source_extra: str = "") -> subprocess.Popen[str]:
    job = write_job(tmp_path, sim, tmp_path / "export")
    text = (
        job.read_text()
        .replace("requests_per_second = 200\nmin_requests_per_second = 50\nburst = 4\n", "")
        .replace("[source]\n", f"[source]\n{source_extra}")
    )
    job.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update(PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus", PORTSHIFT_CHORUS_TOKEN=CANARY)
    args = ["run", "--config", str(job), "--state", str(tmp_path / "state.db"), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-m", "portshift", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(proc: subprocess.Popen[str], condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the run never got to the wait: {out[-1000:]} {err[-2000:]}")
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen[str]) -> tuple[float, str]:
    time.sleep(0.5)  # well inside the wait
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"SIGINT did not stop the run in 10 s: {err[-2000:]}") from None
    return time.monotonic() - t0, err


def test_sigint_during_a_long_retry_after_in_the_listing_stops_the_run_in_under_2_s(sim: ChorusSimulator, tmp_path: Path) -> None:
    proc = start_run(tmp_path, sim, "requests_per_second = 0.5\n")  # the listing starts 2 s after the check
    wait_for(proc, lambda: sim.stats.requests["api:list"] >= 1)  # the run's check() went through
    sim.configure(faults=Faults(throttle=Fault(ratio=1.0, times=-1, on=("list",)), retry_after="120"))
    wait_for(proc, lambda: sim.stats.throttled >= 1)
    assert sim.stats.list_queries[0].get("with_trackers") == "true"  # a listing page, not the check
    took, err = interrupt(proc)
    assert proc.returncode == 130, err
    print(f"\nSIGINT to exit: {took:.2f} s")
    assert took < 2.0, f"stopped after {took:.2f}s"
    assert sim.stats.throttled == 1  # it was waiting out the Retry-After, not hammering


def test_sigint_during_a_long_rate_limiter_wait_in_the_listing_stops_in_under_2_s(sim: ChorusSimulator, tmp_path: Path) -> None:
    sim.configure(paging=Paging(page_sizes=(1,)))
    proc = start_run(tmp_path, sim, "requests_per_second = 0.02\nburst = 1\n")  # one request per 50 s
    wait_for(proc, lambda: sim.stats.requests["api:list"] >= 1)
    took, err = interrupt(proc)
    assert proc.returncode == 130, err
    print(f"\nSIGINT to exit: {took:.2f} s")
    assert took < 2.0, f"stopped after {took:.2f}s"
    assert sim.stats.requests["api:list"] <= 2


@pytest.mark.parametrize("wait", ["retry_after", "limiter"])
def test_the_listing_raises_interrupted_within_a_second_of_cancel(sim: ChorusSimulator, wait: str) -> None:
    if wait == "retry_after":
        sim.configure(faults=Faults(throttle=Fault(ratio=1.0, times=-1, on=("list",)), retry_after="120"))
        source = make_source(sim, requests_per_second=0)
    else:
        sim.configure(paging=Paging(page_sizes=(1,)))
        source = make_source(sim, requests_per_second=0.02, burst=1)
    source.client.sleep = None  # the real wait
    source.cancel = threading.Event()
    threading.Timer(0.5, source.cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        list(source.recordings(WINDOW))
    took = time.monotonic() - t0
    assert 0.45 < took < 1.5, took
