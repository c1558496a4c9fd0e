"""A scheduled export never wedges and stops when asked: real `portshift run` processes against
the Chorus simulator (HTTPS on 127.0.0.1) into a local folder.

- a run that fails (token revoked mid-run), is killed (SIGKILL) or interrupted (SIGINT) is
  resumed and completed by the very same command, for `--since DATE` and `--since last`;
- SIGINT stops a run within 2 s in every phase: checks, listing held by the rate limiter, a
  long Retry-After, transfers; with one "interrupted" line and the command that resumes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from portshift.errors import ExitCode

from .support import PORTSHIFT, sha256sum_check

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

TOKEN = "sched-" + "k" * 24
NOW = datetime.now(timezone.utc).replace(microsecond=0)
START = NOW - timedelta(days=20)
CALLS = 14


@pytest.fixture
def sim() -> Iterator[object]:
    spec = chorus.TenantSpec(
        calls=CALLS,
        seed=11,
        start=START,
        end=NOW - timedelta(hours=1),
        media_size=30_000,
        unprocessed_ratio=0.0,
        no_show_ratio=0.0,
        zero_duration_ratio=0.0,
        private_ratio=0.0,
        other_type_ratio=0.0,
        same_second_ratio=0.0,
    )
    with chorus.ChorusSimulator(chorus.Tenant(spec), token=TOKEN) as s:
        yield s


def write_job(tmp_path: Path, base_url: str, ca: Path, rps: float = 0, extra: str = "") -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 1\nretries = 1\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{base_url}"\nca_bundle = "{ca}"\n'
        f"requests_per_second = {rps}\nbackoff_base = 0.01\nbackoff_cap = 0.05\nretries = 1\n{extra}\n"
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    return job


def start(tmp_path: Path, job: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update({"PORTSHIFT_CHORUS_TOKEN": TOKEN, "PORTSHIFT_RETRY_BASE": "0.01"})
    cmd = [*PORTSHIFT, "run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--no-progress", "--report", "json"]
    return subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out), err


def wait_for(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def done_recordings(tmp_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{tmp_path / 's.db'}?mode=ro", uri=True) as db:
            return db.execute("select count(*) from recordings where status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def exported_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith("portshift-"))


def break_mid_run(sim: object, tmp_path: Path, job: Path, how: str, *args: str) -> None:
    """Start a run, let it export 3 calls, then revoke the token / SIGKILL / SIGINT it."""
    sim.configure(faults=chorus.Faults(slow=chorus.Fault(ratio=1.0, times=-1, on=("media",)), slow_seconds=0.1))
    before = done_recordings(tmp_path)
    proc = start(tmp_path, job, *args)
    wait_for(lambda: done_recordings(tmp_path) >= before + 3)
    if how == "revoked":
        sim.token = "revoked-" + "x" * 20
        code, report, err = finish(proc)
        assert code == ExitCode.FATAL, err
        assert report["status"] == "failed" and "token" in report["message"]
    elif how == "killed":
        proc.kill()
        proc.communicate(timeout=30)
    else:
        proc.send_signal(signal.SIGINT)
        code, report, err = finish(proc, timeout=10)
        assert code == ExitCode.INTERRUPTED and report["status"] == "interrupted"
        assert len([line for line in err.splitlines() if "interrupted" in line]) == 1, err
    # the advice is the command that works: run the job file again
    if how != "killed":
        assert f"portshift run --config {job}" in report["message"]
    sim.token = TOKEN
    sim.configure(faults=chorus.Faults())


@pytest.mark.parametrize("how", ["revoked", "killed", "interrupted"])
def test_the_same_since_date_command_resumes_a_broken_run(sim: object, tmp_path: Path, how: str) -> None:
    job = write_job(tmp_path, sim.base_url, sim.ca_path)
    since = START.date().isoformat()
    break_mid_run(sim, tmp_path, job, how, "--since", since)
    time.sleep(1.1)  # "now" has moved on: the window of a new job would differ
    code, report, err = finish(start(tmp_path, job, "--since", since))
    assert code == 0, err
    assert report["status"] == "complete" and report["resumed"] is True
    assert report["recordings"]["exported"] + report["recordings"]["already_exported"] == CALLS
    root = tmp_path / "out" / report["export_root"]
    assert sha256sum_check(root).returncode == 0
    assert len(list((tmp_path / "out").iterdir())) == 1, "one export root: the broken job was finished, not restarted"


@pytest.mark.parametrize("how", ["revoked", "interrupted"])
def test_a_scheduled_since_last_run_after_a_failed_one_finishes_it(sim: object, tmp_path: Path, how: str) -> None:
    job = write_job(tmp_path, sim.base_url, sim.ca_path)
    until = (NOW - timedelta(days=12)).isoformat()
    code, first, err = finish(start(tmp_path, job, "--since", START.isoformat(), "--until", until))
    assert code == 0 and first["status"] == "complete", err
    break_mid_run(sim, tmp_path, job, how, "--since", "last")
    code, second, err = finish(start(tmp_path, job, "--since", "last"))
    assert code == 0, err
    assert second["status"] == "complete" and second["resumed"] is True
    assert len(exported_files(tmp_path)) == CALLS * 4, "every call exported once: media, transcript, captions, metadata"
    assert sha256sum_check(tmp_path / "out" / second["export_root"]).returncode == 0
    code, third, err = finish(start(tmp_path, job, "--since", "last"))
    assert code == 0 and third["status"] == "nothing-new", (third, err)


# --- SIGINT in every phase ------------------------------------------------------------------------
def _stop_within_two_seconds(proc: subprocess.Popen[str]) -> str:
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert took < 2.0, f"took {took:.2f}s to stop"
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1, err
    return err


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts TCP connections and never answers (a TLS handshake that hangs)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    t.join()
    for s in accepted:
        s.close()
    listener.close()


def test_sigint_while_checking_an_unanswering_source(sim: object, tmp_path: Path, silent_server: tuple) -> None:
    url, accepted = silent_server
    proc = start(tmp_path, write_job(tmp_path, url, sim.ca_path))
    wait_for(lambda: bool(accepted))
    time.sleep(0.2)
    _stop_within_two_seconds(proc)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_sigint_while_the_listing_waits_for_the_rate_limit(sim: object, tmp_path: Path) -> None:
    proc = start(tmp_path, write_job(tmp_path, sim.base_url, sim.ca_path, rps=0.05), "--since", START.isoformat())
    wait_for(lambda: sum(sim.stats.requests.values()) >= 1)  # the check's request; the next waits 20 s
    time.sleep(0.5)
    err = _stop_within_two_seconds(proc)
    assert "resume with `portshift run --config" in err


def test_sigint_during_a_long_retry_after(sim: object, tmp_path: Path) -> None:
    sim.configure(faults=chorus.Faults(throttle=chorus.Fault(ratio=1.0, times=-1, on=("list",)), retry_after="60"))
    proc = start(tmp_path, write_job(tmp_path, sim.base_url, sim.ca_path, extra="max_retry_after = 120"), "--since", "last")
    wait_for(lambda: sim.stats.throttled >= 1)
    time.sleep(0.3)
    _stop_within_two_seconds(proc)


def test_sigint_during_slow_transfers(sim: object, tmp_path: Path) -> None:
    sim.configure(faults=chorus.Faults(slow=chorus.Fault(ratio=1.0, times=-1, on=("media",)), slow_seconds=30))
    proc = start(tmp_path, write_job(tmp_path, sim.base_url, sim.ca_path), "--since", START.isoformat())
    wait_for(lambda: any(k.startswith("media:") for k in sim.stats.requests))
    time.sleep(0.3)
    _stop_within_two_seconds(proc)


# --- the schedules docs/cli.md shows ----------------------------------------------------------------
def _documented_commands() -> dict[str, list[str]]:
    import shlex

    import yaml

    from .test_docs import fenced_blocks

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    blocks = {b.title: b.body for b in fenced_blocks(text) if b.title}
    cron = next(line for line in blocks["crontab"].splitlines() if line and not line.startswith("#"))
    cron_args = shlex.split(cron.split(" ", 5)[5].split(">>")[0])
    unit = next(line for line in blocks["portshift-export.service"].splitlines() if line.startswith("ExecStart="))
    unit_args = shlex.split(unit.split("=", 1)[1])
    cronjob = yaml.safe_load(blocks["cronjob.yaml"])
    spec = cronjob["spec"]
    assert cronjob["kind"] == "CronJob" and spec["concurrencyPolicy"] == "Forbid"
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return {"cron": cron_args, "systemd": unit_args, "kubernetes": ["portshift", *container["args"]]}


@pytest.mark.parametrize("where", ["cron", "systemd", "kubernetes"])
def test_the_documented_schedules_survive_a_failed_run(sim: object, tmp_path: Path, where: str) -> None:
    args = _documented_commands()[where]
    assert args[:2] == ["portshift", "run"] and "--config" in args
    rest = args[2:]
    rest = [a for i, a in enumerate(rest) if a != "--config" and (i == 0 or rest[i - 1] != "--config")]
    job = write_job(tmp_path, sim.base_url, sim.ca_path)
    code, first, err = finish(
        start(tmp_path, job, "--since", START.isoformat(), "--until", (NOW - timedelta(days=12)).isoformat())
    )
    assert code == 0, err
    break_mid_run(sim, tmp_path, job, "revoked", *rest)
    code, report, err = finish(start(tmp_path, job, *rest))
    assert code == 0 and report["status"] == "complete" and report["resumed"] is True, err
