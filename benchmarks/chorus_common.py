"""What the three Chorus benchmarks share: the simulator as a subprocess, a timed ``portshift run``
subprocess (wall time, job phase, CPU and peak RSS from ``wait4``) and the manifests' digests."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from portshift.testing import PORTSHIFT

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: no token, no CA or proxy variables from this machine,
    only the Chorus plugin loaded (a Chorus -> local install), and Python's bytecode cache on, as
    in a pip install (which compiles it) even where ``PYTHONDONTWRITEBYTECODE`` is set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PORTSHIFT_")
        and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONDONTWRITEBYTECODE")
        and not k.lower().endswith("_proxy")
    }
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-source-chorus"
    env.update(extra)
    return env


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Simulator:
    """``portshift chorus simulate`` as a subprocess (the way a user starts it)."""

    proc: subprocess.Popen[str]
    work: Path
    base_url: str
    ca: Path
    token_file: Path
    info: dict[str, object] = field(default_factory=dict)

    @classmethod
    def start(cls, work: Path, *args: str) -> Simulator:
        work.mkdir(parents=True, exist_ok=True)
        info_file, token_file, ca = work / "sim-info.json", work / "sim-token", work / "sim-ca.pem"
        proc = subprocess.Popen(
            [*PORTSHIFT, "chorus", "simulate", *args, "--ca-out", str(ca), "--token-out", str(token_file)]
            + ["--info-out", str(info_file)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=work,
        )
        deadline = time.monotonic() + 60
        while not info_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read() if proc.stdout else ""
                sys.exit(f"the Chorus simulator did not start: {out[-2000:]}")
            time.sleep(0.05)
        info = json.loads(info_file.read_text())
        return cls(proc, work, str(info["base_url"]), ca, token_file, info)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> str:
        """Stop it (Ctrl-C) and return its last line (its request counts)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        else:
            out = self.proc.stdout.read() if self.proc.stdout else ""
        lines = [line for line in (out or "").splitlines() if line.startswith("stopped:")]
        return lines[-1] if lines else ""


@dataclass
class RunResult:
    wall: float  #: process start to exit
    job: float  #: the job's first log line ("exporting ...") to exit
    cpu: float  #: user + system seconds of the portshift process
    stderr: str
    #: bytes: the process's VmHWM from /proc, polled every 0.1 s (wait4's ru_maxrss would count
    #: the benchmark's own memory, inherited across fork + exec)
    peak_rss: int = 0
    #: of ``cpu``, the kernel's share (system seconds): file creation on a busy ext4 is most of it
    sys_cpu: float = 0.0


def portshift_run(
    job: Path,
    state: Path,
    *,
    transfers: int | None = None,
    profile: Path | None = None,
    log_level: str = "info",
    env: dict[str, str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> RunResult:
    """One ``portshift run`` subprocess, timed; exits the benchmark if the job is not complete.

    Run as cron or a Kubernetes Job would: no terminal, so ``portshift run`` logs a progress
    line every 10 s (its default without a TTY); ``progress=False`` passes ``--no-progress``."""
    argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--log-level", log_level]
    argv += [] if progress else ["--no-progress"]
    if transfers is not None:
        argv += ["--transfers", str(transfers)]
    if workers is not None:
        argv += ["--workers", str(workers)]  # CPU: wait4 counts the worker processes it waited for
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or "py-spy"
        argv = [spy, "record", "--rate", "100", "--format", "speedscope", "-o", str(profile), "--", *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm = [0]

    def exited() -> bool:  # without reaping it (proc.poll() would, and wait4 below would then fail)
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # wait4 below reaped it
            return True

    def poll_hwm() -> None:
        while not exited():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                hwm[0] = max(hwm[0], int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.1)

    threading.Thread(target=poll_hwm, daemon=True).start()
    job_started = None
    err: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        if job_started is None and ": exporting " in line:
            job_started = time.perf_counter()
        err.append(line)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = "".join(err)
    if proc.returncode != 0 or "complete" not in out:
        sys.exit(f"portshift run failed ({proc.returncode}):\n{out[-1500:]}\n{text[-3000:]}")
    return RunResult(
        ended - started, ended - (job_started or started), usage.ru_utime + usage.ru_stime, text, hwm[0] * 1024, usage.ru_stime
    )


def manifest_digests(root: Path) -> dict[str, str]:
    """path -> SHA-256 from every portshift-manifest.txt under root."""
    out: dict[str, str] = {}
    for manifest in root.rglob("portshift-manifest.txt"):
        for line in manifest.read_text().splitlines():
            digest, _, path = line.partition("  ")
            out[path] = digest
    return out


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.1f} MB/s"
