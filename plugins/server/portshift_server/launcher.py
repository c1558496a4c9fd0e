"""How a job's worker is started: a small interface, and the default local-subprocess launcher.

A worker is a fresh ``python -m portshift run`` process for one job. It gets its job file (no
secret) and its own state file by path, and its credentials as one JSON document written to its
standard input, which is then closed. A launcher must keep to that: credentials travel over a
live channel only (a pipe here; for a Kubernetes Job, say, an attach stream or a one-shot
socket), never through argv, the environment, a file or a stored object.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger("portshift.server.launcher")

#: Environment variables a worker inherits from the server (everything else is dropped, so no
#: credential or cloud identity of the server's own reaches a customer's job).
WORKER_ENV_ALLOW = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PORTSHIFT_LOAD_PLUGINS",
    "PORTSHIFT_RETRY_BASE",
    # trust-store variables are ignored by portshift itself; passed so nothing else changes
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


@dataclass
class JobSpec:
    """What a launcher needs to start one worker. Holds no credential."""

    job_id: str
    work_dir: Path
    job_file: Path
    state_file: Path
    #: called with ("stdout" | "stderr", line) for every line the worker prints
    on_output: Callable[[str, str], None] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "portshift",
            "--log-format",
            "json",
            "run",
            "--config",
            str(self.job_file),
            "--state",
            str(self.state_file),
            "--secrets-from-stdin",
            "--no-progress",
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_ALLOW}
        tmp = self.work_dir / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        env.update({"HOME": str(self.work_dir), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env


class Handle(Protocol):
    """A started worker."""

    def poll(self) -> int | None:
        """The exit code once the worker ended (negative: killed by that signal), else None."""

    def cancel(self) -> None:
        """Ask the worker to stop cleanly (it finishes in-flight files and keeps its state)."""

    def kill(self) -> None:
        """Stop the worker at once."""

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the end; the exit code, or None on timeout."""

    @property
    def pid(self) -> int | None:
        """The local process id, when there is one."""


class Launcher(Protocol):
    def start(self, spec: JobSpec, secrets: bytearray) -> Handle:
        """Start a worker and hand it ``secrets`` over a live channel. The launcher zeroes
        ``secrets`` once handed over (also when starting fails)."""


def zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def _write_all(fd: int, data: bytearray) -> None:
    """os.write straight from the buffer: no buffered copy of the credentials in this process."""
    sent = 0
    with memoryview(data) as view:
        while sent < len(data):
            sent += os.write(fd, view[sent:])


class LocalHandle:
    def __init__(self, proc: subprocess.Popen[bytes], spec: JobSpec) -> None:
        self.proc = proc
        self.spec = spec
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, "stdout"), daemon=True, name=f"out-{spec.job_id[:6]}"),
            threading.Thread(target=self._read, args=(proc.stderr, "stderr"), daemon=True, name=f"err-{spec.job_id[:6]}"),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[bytes] | None, name: str) -> None:
        if stream is None:
            return
        try:
            for raw in stream:
                if self.spec.on_output is not None:
                    try:
                        self.spec.on_output(name, raw.decode("utf-8", "replace").rstrip("\n"))
                    except Exception:  # noqa: BLE001 - a parsing bug must not stop draining the pipe
                        log.debug("output handler failed", exc_info=True)
        finally:
            stream.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._readers:
            t.join(timeout=5)
        return rc


class LocalLauncher:
    """One fresh ``python -m portshift run`` process per job, on this machine.

    ``subprocess`` starts it with fork+exec (vfork where CPython can), so the worker is a new
    interpreter: it shares no memory with the server. Its descriptors are closed except the three
    pipes, and it runs in its own session so that a Ctrl-C meant for the server does not reach it
    (the server stops its workers itself)."""

    def start(self, spec: JobSpec, secrets: bytearray) -> LocalHandle:
        try:
            proc = subprocess.Popen(
                spec.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.work_dir,
                env=spec.env(),
                close_fds=True,
                start_new_session=True,
                bufsize=0,
            )
            assert proc.stdin is not None
            try:
                _write_all(proc.stdin.fileno(), secrets)
            except BrokenPipeError:
                log.warning("worker of job %s exited before reading its credentials", spec.job_id[:6])
            finally:
                proc.stdin.close()
        finally:
            zero(secrets)
        return LocalHandle(proc, spec)
