"""The worker's side of the credential handover: harden first, then collect the credentials once.

A service worker is started as ``python -m portshift.handover <portshift arguments>`` with its
standard input (fd 0) one end of a Unix socket pair (SOCK_SEQPACKET) whose other end its launcher
holds. Before click, pydantic or any plugin is imported, the process:

1. makes itself non-dumpable and drops core dumps (``portshift.hardening``), then forks: the
   child, a fresh address space that is non-dumpable from birth, does the rest, and checks that
   no tracer is attached; the parent only forwards signals and hands on the exit status. So a
   ``/proc/<pid>/mem`` another process of the same user opened in the moments before step 1 (such
   a descriptor stays readable) shows the parent's memory, which never holds a credential; and
   from here on no other process of its user can read the child's memory, open its descriptors
   through ``/proc/<pid>/fd`` or duplicate them (``pidfd_getfd``);
2. creates a fresh socket pair, keeps one end and sends the other to the launcher over fd 0
   together with the line ``portshift-ready 1`` (SCM_RIGHTS). The launcher accepts only a socket
   its own worker created (SO_PEERCRED), so a descriptor another process duplicated before step 1
   is of no use: the credentials never travel over fd 0;
3. puts /dev/null on fd 0, reads the credentials (one JSON document) from its own end until the
   launcher closes it, and keeps them in memory until ``--secrets-from-stdin`` takes them, once.

A second collection in the same process is refused and logged as a security event. fd 0 is a
socket, never a pipe: a socket cannot be opened through ``/proc/<pid>/fd/0`` at all.

``python -m portshift.handover --stream ...`` is the same protocol over a plain stream, for a
worker alone in its container (the Kubernetes launcher): after step 1 the worker prints the ready
line on its standard output and reads the document from its standard input until it is closed
(the launcher attaches once the line appears, writes, and the runtime closes stdin for good).
No process of another job shares that container, so there is no same-user reader to race.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys

READY = b"portshift-ready 1\n"
#: the largest credential document a worker accepts
MAX_BYTES = 1 << 20
#: seconds the worker waits for its credentials once it said it is ready
WAIT = 60.0


class HandoverError(Exception):
    """The credentials could not be collected (one line, no secret)."""


_slot: list[bytearray] = []
_collected = False


def _security_event(what: str) -> None:
    import logging

    logging.getLogger("portshift.security").error("security: %s", what, extra={"event": "security"})


def collect(channel_fd: int = 0, wait: float = WAIT) -> bytearray:
    """Steps 2 and 3 above (the caller hardened the process first). Returns the raw document."""
    global _collected
    if _collected:
        _security_event("a second attempt to collect the credentials in this worker was refused")
        raise HandoverError("the credentials were already collected; a worker collects them once")
    _collected = True
    if not stat.S_ISSOCK(os.fstat(channel_fd).st_mode):
        raise HandoverError("standard input is not a handover socket; start the worker through a portshift launcher")
    chan = socket.socket(fileno=channel_fd)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket.send_fds(chan, [READY], [theirs.fileno()])
    except OSError as e:
        raise HandoverError(f"the launcher is gone ({type(e).__name__})") from None
    finally:
        theirs.close()
        chan.close()  # fd 0 is free again ...
        null = os.open(os.devnull, os.O_RDONLY)  # ... and /dev/null takes it
        if null != channel_fd:
            os.dup2(null, channel_fd)
            os.close(null)
    buf = bytearray(MAX_BYTES + 1)
    got = 0
    mine.settimeout(wait)
    try:
        with memoryview(buf) as view:
            while got <= MAX_BYTES:
                n = mine.recv_into(view[got:])
                if n == 0:
                    break
                got += n
    except OSError as e:  # socket.timeout is an OSError
        raise HandoverError(f"no credentials from the launcher ({type(e).__name__})") from None
    finally:
        mine.close()
    if got > MAX_BYTES:
        buf[:] = bytes(len(buf))
        raise HandoverError("the credential document is too large")
    out = bytearray(buf[:got])
    buf[:] = bytes(len(buf))
    return out


def collect_stream(wait: float = WAIT) -> bytearray:
    """The ``--stream`` form of steps 2 and 3: the ready line on stdout, the document on stdin."""
    global _collected
    if _collected:
        _security_event("a second attempt to collect the credentials in this worker was refused")
        raise HandoverError("the credentials were already collected; a worker collects them once")
    _collected = True
    import select
    import time

    os.write(1, READY)
    buf = bytearray(MAX_BYTES + 1)
    got = 0
    deadline = time.monotonic() + wait
    with memoryview(buf) as view:
        while got <= MAX_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([0], [], [], left)[0]:
                buf[:] = bytes(len(buf))
                raise HandoverError("no credentials on standard input in time")
            n = os.readv(0, [view[got:]])
            if n == 0:
                break
            got += n
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if got > MAX_BYTES:
        buf[:] = bytes(len(buf))
        raise HandoverError("the credential document is too large")
    out = bytearray(buf[:got])
    buf[:] = bytes(len(buf))
    return out


def take() -> str | None:
    """The collected document for ``--secrets-from-stdin``, once; None when this process was not
    started through the handover. A second take is refused and logged as a security event."""
    if not _collected:
        return None
    if not _slot:
        _security_event("a second attempt to take the handed-over credentials was refused")
        raise HandoverError("the credentials were already taken; a worker takes them once")
    buf = _slot.pop()
    try:
        return buf.decode("utf-8")
    except UnicodeDecodeError:
        raise HandoverError("the credential document is not UTF-8") from None
    finally:
        buf[:] = bytes(len(buf))


def _relay(child: int) -> None:
    """The parent: forward the stop signals, then end as the child ended."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    null = os.open(os.devnull, os.O_RDONLY)  # the channel is the child's alone
    os.dup2(null, 0)
    os.close(null)
    _pid, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def main() -> None:
    from .hardening import harden_process, is_dumpable, tracer_pid

    harden_process()  # first of all: before the credentials can exist in this process
    stream = sys.argv[1:2] == ["--stream"]
    if stream:
        del sys.argv[1]
    os.closerange(3, 1 << 16)  # nothing inherited beyond the channel and the two output pipes
    parent = os.getpid()
    child = os.fork()
    if child:
        _relay(child)
    die_with_parent(parent)  # a worker killed from outside takes its child along
    try:
        if is_dumpable() or tracer_pid() != 0:
            raise HandoverError("this worker is traced or dumpable; it refuses to receive credentials")
        _slot.append(collect_stream() if stream else collect(0))
    except HandoverError as e:
        print(f"portshift: error: {e}", file=sys.stderr, flush=True)
        sys.exit(5)  # ExitCode.FATAL, without importing the CLI
    sys.argv = ["portshift", *sys.argv[1:]]
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    import portshift.handover as _self  # one module object: the slot ``take`` reads

    _self.main()
