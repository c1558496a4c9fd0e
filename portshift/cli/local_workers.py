"""``portshift run --workers N``: this process is the first worker of the job (it shows the
progress and prints the summary); the N-1 others join the job once it exists, pass SIGTERM on and
are waited for. Each worker claims recordings from the state, so the N processes share the job
exactly as workers on other machines would.

On Linux the others are forked before this process starts any thread: a copy of it with the job
file read, the credentials in memory and every module imported, that waits on a pipe until the
job exists and then runs as a worker of it. A worker so starts at once and costs no interpreter
start-up, imports or second reading of the credentials (about 0.3 s of CPU each on a 2-core
machine). Elsewhere, or when a thread is already running (a fork copies only the thread that
calls it), they are ``portshift worker`` processes, handed the credentials over standard input.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..config import JobSection
from ..pipeline import RunRequest
from ..records import JobRecord
from .process_end import end_process

log = logging.getLogger("portshift.run")

#: a forked worker's run: (the job's window start, its end) -> exit status
ChildRun = Callable[[str, str], int]


#: the fewest transfers a worker of ``run --workers`` runs by default (one would leave its core
#: idle while it waits on the network)
LOCAL_MIN_TRANSFERS = 2


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_worker_transfers(workers: int, cores: int) -> int:
    """Transfers per worker of ``run --workers N`` when neither ``[job] transfers`` nor
    ``--transfers`` sets them: about two per core over the machine, between 2 and the job's
    default (4). The workers are there for the cores, and more threads than that cost CPU per
    call: on 2 cores, 2 workers x 4 transfers reached 0.86-0.94 of a plain client, 2 x 2
    0.87-1.03 (benchmarks/README.md, issue 16, session 9). A ``portshift worker`` keeps the job's
    default: it may be alone on its machine."""
    default = int(JobSection.model_fields["transfers"].default)
    return max(LOCAL_MIN_TRANSFERS, min(default, (2 * max(1, cores)) // max(1, workers)))


def can_fork() -> bool:
    """Fork only on Linux, and only while this process has one thread."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


class LocalWorkers:
    def __init__(
        self,
        count: int,
        config_path: Path,
        req: RunRequest,
        secrets: dict[str, Any] | None,
        log_args: list[str],
        *,
        transfers: int,
    ) -> None:
        self.count = count
        self.transfers = transfers  #: each worker's, for the log line
        self.config_path = config_path
        self.state_target = ""  #: for ``portshift worker`` processes: set once the state is open
        self.req = req
        self._secrets = secrets
        self.log_args = log_args
        self.procs: list[subprocess.Popen[bytes]] = []
        #: forked workers still waiting for the job: (pid, the pipe end that starts them)
        self.waiting: list[tuple[int, int]] = []
        self.forked: list[int] = []

    # --- forked workers ------------------------------------------------------------------------
    def fork(self, run: ChildRun) -> bool:
        """Fork the other workers now if this process can (:func:`can_fork`); True if it did."""
        if not can_fork():
            return False
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is copied, to be written twice
            stream.flush()
        for _ in range(self.count - 1):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                os.close(w)
                for _, sibling in self.waiting:
                    os.close(sibling)
                _child(r, run)
            os.close(r)
            self.waiting.append((pid, w))
            self.forked.append(pid)
        self._secrets = None  # the forked workers have them: this process no longer hands them on
        return True

    def release(self) -> None:
        """Tell the forked workers that have not started that there is no job for them: they end."""
        for _, w in self.waiting:
            os.close(w)
        self.waiting.clear()

    # --- starting them -------------------------------------------------------------------------
    def argv(self, job: JobRecord) -> list[str]:
        """The other workers' command: the job's own window, so that a worker that starts after
        the job ended finds it complete and exits, instead of planning another job (``--since
        last`` would move on from the job just finished)."""
        args = [sys.executable, "-m", "portshift", *self.log_args, "worker", "--config", str(self.config_path)]
        args += ["--state", self.state_target, "--no-progress"]
        args += ["--since", job.window_start, "--until", job.window_end]
        if self.req.transfers:
            args += ["--transfers", str(self.req.transfers)]
        if self._secrets is not None:
            args.append("--secrets-from-stdin")
        return args

    def start(self, job: JobRecord) -> None:
        """Start the other workers (the job exists now: they join it)."""
        if self.forked:
            window = json.dumps({"since": job.window_start, "until": job.window_end}).encode()
            for _, w in self.waiting:
                try:
                    os.write(w, window)  # a few dozen bytes: one write, the pipe holds them
                except OSError:
                    log.warning("a worker process ended before the job started")
            self.release()
            how = f"{len(self.forked)} forked from this one"
        else:
            self._spawn(job)
            how = f"{len(self.procs)} started as `portshift worker`"
        log.info("job %s: %d worker processes on this machine (%s), %d transfers each", job.id, self.count, how, self.transfers)

    def _spawn(self, job: JobRecord) -> None:
        argv = self.argv(job)
        for _ in range(self.count - 1):
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if self._secrets is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            if self._secrets is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(json.dumps(self._secrets).encode())
                    proc.stdin.close()
                except OSError:
                    log.warning("a worker process ended before it got its credentials")
            self.procs.append(proc)
        self._secrets = None  # handed over: not kept longer than needed

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for pid in self.forked:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> list[int]:
        self.release()
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        for pid in self.forked:
            try:
                codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            except ChildProcessError:  # already waited for
                pass
        self.forked.clear()
        failed = [c for c in codes if c not in (0,)]
        if failed:
            log.warning("%d of %d worker processes ended with an error (exit %s)", len(failed), len(codes), sorted(set(failed)))
        return codes


def _child(r: int, run: ChildRun) -> NoReturn:
    """A forked worker: wait for the job's window on ``r``, work on the job, end the process."""
    code = 0
    # Ctrl-C reaches every process of the terminal's group: while waiting, the first worker
    # decides (it stops, its pipe closes and this worker ends); once working, the run's own
    # handler stops this worker cleanly
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.close(r)
        if data:  # nothing: the job did not start (an error, a stop): nothing to do
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)  # as a `portshift worker` of `run --workers`: no summary of its own
            os.close(null)
            window = json.loads(data)
            signal.signal(signal.SIGINT, previous)
            code = _guarded(lambda: run(window["since"], window["until"]))
    except BaseException:  # noqa: BLE001 - a forked worker must never return into its parent's stack
        code = 70
        try:
            sys.stderr.write("portshift: internal error in a worker process:\n" + traceback.format_exc(limit=3))
        except Exception:  # noqa: BLE001, S110
            pass
    end_process(code, forked=True)


def _guarded(fn: Callable[[], int]) -> int:
    """The CLI's error policy (one line, the documented exit code) around a forked worker's run."""
    from . import guarded

    try:
        return guarded(fn)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
