"""The launcher's side of the credential handover (the worker's side is ``portshift.handover``).

Every launcher that starts a worker on this host uses it:

1. ``channel()`` makes a Unix socket pair (SOCK_SEQPACKET); the worker gets one end as its fd 0.
   A socket, unlike a pipe, cannot be opened through ``/proc/<pid>/fd/0``.
2. The hardened worker sends ``portshift-ready 1`` with a socket it created after hardening.
   ``deliver`` accepts it only when the socket's creator (SO_PEERCRED) is that worker: the
   launcher's ``accept(pid, uid)`` checks the pid (and, in the sandbox, the job's own uid). A
   malformed message or a socket made by anyone else is refused and logged as a security event;
   the launcher keeps waiting for the real worker until ``timeout``.
3. The credentials are written once to the accepted socket, which is then closed, and zeroed here.
4. ``watch`` keeps reading the control end until every holder closed it: any further message
   there (a second request for credentials) is refused and logged as a security event.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

log = logging.getLogger("portshift.server.handover")
security = logging.getLogger("portshift.security")

READY = b"portshift-ready 1\n"
#: seconds a started worker has to harden itself and say it is ready
READY_TIMEOUT = 60.0


class HandoverFailed(Exception):
    """No hardened worker collected the credentials (one line, no secret)."""


def channel() -> tuple[socket.socket, socket.socket]:
    """(launcher's end, worker's end); the worker's end is inheritable, to become its fd 0."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return mine, theirs


def security_event(label: str, what: str) -> None:
    security.error("security: job %s: %s", label, what, extra={"event": "security", "job": label})


class _Refusals:
    """Security events of one channel: each of the first ``FULL`` logged, then every 100th with a
    count (a flood of requests must not become a flood of log lines)."""

    FULL = 20

    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0

    def __call__(self, what: str) -> None:
        self.count += 1
        if self.count <= self.FULL:
            security_event(self.label, what)
        elif self.count % 100 == 0:
            security_event(self.label, f"{what} ({self.count} refused on this channel so far)")


def peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that created ``sock``'s peer, in this pid namespace."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def _write_all(sock: socket.socket, data: bytearray) -> None:
    with memoryview(data) as view:
        sent = 0
        while sent < len(data):
            sent += sock.send(view[sent:])


def deliver(
    control: socket.socket,
    secrets: bytearray,
    accept: Callable[[int, int], bool],
    label: str,
    timeout: float = READY_TIMEOUT,
    alive: Callable[[], bool] = lambda: True,
) -> int:
    """Wait for the hardened worker, hand it ``secrets`` once; returns the worker's pid. Zeroes
    ``secrets`` in every case. Raises HandoverFailed when no accepted worker asked in time."""
    deadline = time.monotonic() + timeout
    refuse = _Refusals(label)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not alive():
                raise HandoverFailed("the worker did not become ready for its credentials")
            control.settimeout(min(left, 0.5))
            try:
                msg, fds, _flags, _addr = socket.recv_fds(control, 64, 4)
            except TimeoutError:
                continue
            if not msg and not fds:
                raise HandoverFailed("the worker ended before it collected its credentials")
            socks = [socket.socket(fileno=fd) for fd in fds]
            try:
                if msg != READY or len(socks) != 1 or socks[0].family != socket.AF_UNIX:
                    refuse("a malformed credential request on the worker's channel was refused")
                    continue
                pid, uid = peer(socks[0])
                if not accept(pid, uid):
                    refuse(f"a credential request from a socket not made by the worker (pid {pid}) was refused")
                    continue
                _write_all(socks[0], secrets)
                socks[0].shutdown(socket.SHUT_WR)
                return pid
            finally:
                for s in socks:
                    s.close()
    finally:
        secrets[:] = bytes(len(secrets))


def watch(control: socket.socket, label: str) -> threading.Thread:
    """After the handover: any message on the control end is a second request (refused, logged).
    The thread ends when every holder of the worker's end closed it."""

    refuse = _Refusals(label)

    def run() -> None:
        control.settimeout(None)
        try:
            while True:
                msg, fds, _flags, _addr = socket.recv_fds(control, 64, 4)
                for fd in fds:
                    os.close(fd)
                if not msg and not fds:
                    return
                refuse("a second attempt to collect the credentials was refused")
        except OSError:
            return
        finally:
            control.close()

    t = threading.Thread(target=run, name=f"handover-{label}", daemon=True)
    t.start()
    return t


def descends_from(pid: int, ancestor: int, depth: int = 4) -> bool:
    """Whether ``pid`` is ``ancestor`` or a descendant within ``depth`` generations (/proc)."""
    for _ in range(depth + 1):
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False
