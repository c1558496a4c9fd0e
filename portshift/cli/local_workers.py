"""``portshift run --workers N``: this process is the first worker of the job (it shows the
progress and prints the summary); it starts N-1 ``portshift worker`` processes once the job
exists, hands them the credentials it read from standard input (if any) over their own standard
input, passes SIGTERM on and waits for them. Each worker claims recordings from the state, so
the N processes share the job exactly as workers on other machines would."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..pipeline import RunRequest
from ..records import JobRecord

log = logging.getLogger("portshift.run")


class LocalWorkers:
    def __init__(
        self,
        count: int,
        config_path: Path,
        state_target: str,
        req: RunRequest,
        secrets: dict[str, Any] | None,
        log_args: list[str],
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.state_target = state_target
        self.req = req
        self._secrets = secrets
        self.log_args = log_args
        self.procs: list[subprocess.Popen[bytes]] = []

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
        job_id = job.id
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
        log.info("job %s: %d worker processes on this machine", job_id, self.count)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> list[int]:
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        failed = [c for c in codes if c not in (0,)]
        if failed:
            log.warning("%d of %d worker processes ended with an error (exit %s)", len(failed), len(codes), sorted(set(failed)))
        return codes
