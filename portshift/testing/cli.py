"""Run the real ``portshift`` command line in a subprocess, as an operator would, and read what it
reported.

``run_portshift("run", "--config", job, env=clean_env(PORTSHIFT_AWS_...=...))`` returns a
:class:`CliResult`: the exit code, stdout, stderr and, when the command printed a JSON report
(``--report json``), that report parsed. :meth:`CliResult.failed_recordings` reads the failed
recordings from the report when there is one, else from the human summary on stderr: that
parsing lives here, once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ExitCode

#: the interpreter running the tests, with portshift and its plugins installed
PORTSHIFT = [sys.executable, "-m", "portshift"]

_FAILED_HEAD = re.compile(r"^failed (\d+) recordings")
#: ``  <recording id>  <reason>  <message>``
_FAILED_LINE = re.compile(r"^  (\S+)  (\S+)  (.+)$")


def clean_env(*, drop: Iterable[str] = ("PORTSHIFT_",), **extra: str) -> dict[str, str]:
    """This process's environment without variables whose name starts with one of ``drop``
    (every ``PORTSHIFT_*`` by default), plus ``extra``."""
    prefixes = tuple(drop)
    env = {k: v for k, v in os.environ.items() if not (prefixes and k.startswith(prefixes))}
    env.update(extra)
    return env


@dataclass
class CliResult:
    """What one ``portshift`` command did."""

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any] | None:
        """The JSON report on stdout (``--report json``), or ``None`` when there is none."""
        text = self.stdout.strip()
        if not text.startswith("{"):
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def failed_recordings(self) -> dict[str, str]:
        """Recording id -> the reason it failed, as the command reported it.

        From the JSON report's ``failed`` list when the command ran with ``--report json``;
        otherwise from the human summary on stderr (:func:`failed_on_stderr`)."""
        report = self.report
        if report is not None and isinstance(report.get("failed"), list):
            return {str(f["recording_id"]): str(f.get("message") or f.get("reason") or "") for f in report["failed"]}
        return failed_on_stderr(self.stderr)

    def __str__(self) -> str:
        """For assertion messages: the command, its exit code and the end of its output."""
        return f"portshift {' '.join(self.args)}: exit {self.exit_code}\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}"


def failed_on_stderr(stderr: str) -> dict[str, str]:
    """Recording id -> message of the failed recordings listed in the human summary of
    ``portshift run`` on stderr (``failed N recordings ...``, then ``  <id>  <reason>  <message>``
    lines; ``{}`` when it lists none). At most 50 are listed there. Prefer ``--report json``."""
    lines = stderr.splitlines()
    heads = [i for i, line in enumerate(lines) if _FAILED_HEAD.match(line)]
    if not heads:
        return {}
    assert len(heads) == 1, f"the failed recordings are listed twice:\n{stderr[-3000:]}"
    m = _FAILED_HEAD.match(lines[heads[0]])
    assert m is not None
    count = int(m.group(1))
    out: dict[str, str] = {}
    for line in lines[heads[0] + 1 :]:
        found = _FAILED_LINE.match(line)
        if not found:
            break
        out[found.group(1)] = found.group(3)
    assert len(out) == min(count, 50), f"{count} failed recordings announced, {len(out)} listed:\n{stderr[-3000:]}"
    return out


def run_portshift(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    input: str | None = None,  # noqa: A002 - as subprocess.run calls it
) -> CliResult:
    """Run ``portshift *args`` in a subprocess of this interpreter; ``env`` defaults to
    :func:`clean_env`. A command that does not finish within ``timeout`` fails the test with the
    end of its stderr."""
    argv = [str(a) for a in args]
    try:
        done = subprocess.run(
            [*PORTSHIFT, *argv],
            capture_output=True,
            text=True,
            env=clean_env() if env is None else env,
            cwd=cwd,
            timeout=timeout,
            input=input,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(
            f"portshift {' '.join(argv)} did not finish in {timeout:g} s; stderr ends with: {err[-3000:]}"
        ) from None
    return CliResult(argv, done.returncode, done.stdout, done.stderr)


def query_state(state: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a SQLite state file, opened read-only (a run may still hold it)."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return list(db.execute(sql, args))


class DoneFile(NamedTuple):
    """A content file a run recorded as done."""

    size: int
    sha256: str
    recording_id: str
    done_at: str


def done_files(state: Path, job_id: str | None = None) -> dict[str, DoneFile]:
    """Every content file recorded as done in a state file (of job ``job_id``; of the only job
    when ``None``): key (under the export root) -> :class:`DoneFile`."""
    if job_id is None:
        jobs = query_state(state, "select id from jobs")
        assert len(jobs) == 1, f"{len(jobs)} jobs in {state}: say which one"
        job_id = jobs[0][0]
    rows = query_state(
        state,
        "select key, size, sha256, recording_id, done_at from files where kind = 'content' and job_id = ?",
        job_id,
    )
    return {key: DoneFile(size, sha, rid, done_at) for key, size, sha, rid, done_at in rows}


def failed_in_state(state: Path) -> dict[str, str]:
    """Recording id -> the reason it failed, as the state file has it (compare with
    :meth:`CliResult.failed_recordings`)."""
    rows = query_state(state, "select recording_id, message from recordings where status = 'failed'")
    return dict(rows)


def checked_failures(result: CliResult, state: Path) -> dict[str, str]:
    """The failed recordings of a ``portshift run --report json``, after checking that its JSON
    report, the summary on stderr and the state file all list the same ones with the same reasons."""
    assert result.report is not None, f"no JSON report on stdout (run with --report json)\n{result}"
    in_state = failed_in_state(state)
    assert result.failed_recordings() == in_state, "the JSON report and the state file disagree on what failed and why"
    assert failed_on_stderr(result.stderr) == in_state, "the summary on stderr and the state file disagree"
    return in_state


class Interrupted(NamedTuple):
    """What :func:`interrupt_run` saw: the exit code, the seconds from SIGINT to the exit, stderr,
    and ``count()`` just before the signal and once the run had exited (``None`` without ``count``)."""

    exit_code: int
    seconds: float
    stderr: str
    counted: int | None
    counted_after: int | None

    def assert_stopped_promptly(self, within: float = 1.0) -> None:
        """The run exited with code 130 (interrupted) within ``within`` seconds of the signal,
        without a traceback, and ``count()`` did not move after the signal (no request sent)."""
        print(f"stopped {self.seconds:.3f} s after SIGINT, exit {self.exit_code}")
        assert self.exit_code == ExitCode.INTERRUPTED, self.stderr
        assert self.seconds < within, f"stopped {self.seconds:.2f} s after SIGINT"
        assert self.counted_after == self.counted, "no request after the signal"
        assert "Traceback" not in self.stderr


def interrupt_run(
    job: Path,
    state: Path,
    *,
    env: dict[str, str],
    reached: Callable[[], bool],
    count: Callable[[], int] | None = None,
    settle: float = 0.5,
    timeout: float = 60,
) -> Interrupted:
    """Start ``portshift run --config job --state state --no-progress`` in a subprocess, wait (at
    most ``timeout`` seconds) until ``reached()`` is true while it still runs, let it ``settle``
    seconds more, then send SIGINT (Ctrl-C) and wait for it to exit (30 s at most). A run that ends
    or never reaches the condition fails the test with its stderr; the process is killed if it
    outlives the test."""
    argv = ["run", "--config", str(job), "--state", str(state), "--no-progress"]
    proc = subprocess.Popen([*PORTSHIFT, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not reached() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert reached() and proc.poll() is None, f"the run never reached the condition: {proc.communicate()[1]}"
        time.sleep(settle)
        counted = None if count is None else count()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Interrupted(proc.returncode, seconds, err, counted, None if count is None else count())
