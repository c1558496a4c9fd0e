"""How a job's worker is started: a small interface, the handover thread every local launcher
shares, and the unisolated launcher (development only; ``sandbox.py`` is the default).

A worker is a fresh ``python -m portshift.handover run ...`` process for one job. It gets its job
file (no secret) and its own state by path, under a work folder named by an internal name (never
the job id), and its credentials through the handover (``handover.py``): once, after it made
itself non-dumpable, over a socket it created itself. A launcher must keep to that: credentials
travel over a live channel only, never through argv, the environment, a file or a stored object.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from . import handover

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
    """What a launcher needs to start one worker. Holds no credential. ``job_id`` stays in the
    service (its logs show ``label``, a short prefix); the worker sees ``name`` at most."""

    job_id: str
    work_dir: Path
    job_file: Path
    state_file: Path
    #: called with ("stdout" | "stderr", line) for every line the worker prints
    on_output: Callable[[str, str], None] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    #: the local sink's export folder, when the job writes to one (the sandbox binds it writable)
    export_dir: Path | None = None

    @property
    def label(self) -> str:
        return self.job_id[:6]

    def argv(self, job_file: Path | None = None, state_file: Path | None = None, python: str | None = None) -> list[str]:
        return [
            python or sys.executable,
            "-m",
            "portshift.handover",  # hardens itself, then collects its credentials (portshift/handover.py)
            "--log-format",
            "json",
            "run",
            "--config",
            str(job_file or self.job_file),
            "--state",
            str(state_file or self.state_file),
            "--secrets-from-stdin",
            "--no-progress",
        ]

    def env(self, home: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_ALLOW}
        if home is None:
            home = self.work_dir
            (home / "tmp").mkdir(mode=0o700, exist_ok=True)
            tmp = home / "tmp"
        else:
            tmp = home
        env.update({"HOME": str(home), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"})
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


class LocalHandle:
    """A worker process on this host. ``worker_pid`` is the process that collected the
    credentials (inside a sandbox, not the launcher's direct child)."""

    def __init__(self, proc: subprocess.Popen[bytes], spec: JobSpec, on_end: Callable[[], None] | None = None) -> None:
        self.proc = proc
        self.spec = spec
        self.worker_pid: int | None = None
        self._on_end = on_end
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, "stdout"), daemon=True, name=f"out-{spec.label}"),
            threading.Thread(target=self._read, args=(proc.stderr, "stderr"), daemon=True, name=f"err-{spec.label}"),
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
            target = self.worker_pid or self.proc.pid
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass

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
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end()
        return rc


class ProcessLauncher:
    """Starts ``command(spec)`` as a local process whose fd 0 is the handover channel, and hands
    the credentials over from a thread once the hardened worker asks (``handover.py``).

    ``subprocess`` starts it with fork+exec, so the worker is a new interpreter: it shares no
    memory with the server. Its descriptors are closed except the channel and two output pipes,
    and it runs in its own session so that a Ctrl-C meant for the server does not reach it."""

    handover_timeout = handover.READY_TIMEOUT

    def command(self, spec: JobSpec) -> tuple[list[str], dict[str, str], Path, list[int]]:
        """argv, environment, working folder and descriptors to pass of the process to start;
        ``start`` closes those descriptors here once the process started."""
        raise NotImplementedError

    def accept(self, proc: subprocess.Popen[bytes], spec: JobSpec, pid: int, uid: int) -> bool:
        """Whether the socket made by ``pid``/``uid`` is this worker's own."""
        raise NotImplementedError

    def released(self, spec: JobSpec) -> None:
        """Called once the worker ended."""

    def start(self, spec: JobSpec, secrets: bytearray) -> LocalHandle:
        owned = bytearray(secrets)  # the caller zeroes its copy when this returns; the thread zeroes this one
        zero(secrets)
        try:
            argv, env, cwd, fds = self.command(spec)
            control, child_end = handover.channel()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=child_end,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=env,
                    close_fds=True,
                    start_new_session=True,
                    bufsize=0,
                    pass_fds=fds,
                )
            except BaseException:
                control.close()
                raise
            finally:
                child_end.close()
                for fd in fds:
                    os.close(fd)
        except BaseException:
            zero(owned)
            self.released(spec)
            raise
        handle = LocalHandle(proc, spec, on_end=lambda: self.released(spec))
        threading.Thread(
            target=self._hand_over, args=(handle, control, owned), name=f"handover-{spec.label}", daemon=True
        ).start()
        return handle

    def _hand_over(self, handle: LocalHandle, control: socket.socket, secrets: bytearray) -> None:
        spec, proc = handle.spec, handle.proc
        try:
            handle.worker_pid = handover.deliver(
                control,
                secrets,
                lambda pid, uid: self.accept(proc, spec, pid, uid),
                spec.label,
                timeout=self.handover_timeout,
                alive=lambda: proc.poll() is None,
            )
        except handover.HandoverFailed as e:
            log.warning("job %s: %s", spec.label, e)
            control.close()
            handle.kill()
            return
        except OSError as e:
            log.warning("job %s: the credential handover failed (%s)", spec.label, type(e).__name__)
            control.close()
            handle.kill()
            return
        handover.watch(control, spec.label)


class UnisolatedLauncher(ProcessLauncher):
    """DEVELOPMENT ONLY: one ``portshift.handover run`` process per job, as the server's own user,
    with the server's view of the file system. It keeps the credential handover (a hardened
    worker, a socket only it made) but no isolation between jobs or from the service's files:
    code running in one job's worker can read other jobs' work folders, the service database and
    its keys. Use the sandbox launcher (``sandbox.py``) for anything else."""

    name = "unisolated"

    def command(self, spec: JobSpec) -> tuple[list[str], dict[str, str], Path, list[int]]:
        return spec.argv(), spec.env(), spec.work_dir, []

    def accept(self, proc: subprocess.Popen[bytes], spec: JobSpec, pid: int, uid: int) -> bool:
        # the worker's fresh child (portshift/handover.py) makes the socket
        return uid == os.getuid() and pid != proc.pid and handover.descends_from(pid, proc.pid, depth=1)


#: the former name
LocalLauncher = UnisolatedLauncher
