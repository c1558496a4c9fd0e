"""Process hardening at start: no core dumps, not dumpable (so same-uid processes cannot ptrace
or read this process's memory through /proc, nor open or duplicate its descriptors).

A service worker hardens before it can receive credentials: ``portshift.handover`` calls
``harden_process`` as its first statement, then checks ``tracer_pid() == 0``."""

from __future__ import annotations

import ctypes
import logging
import resource
import sys

log = logging.getLogger("portshift.hardening")
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _libc() -> ctypes.CDLL:
    """libc as already loaded in this process (dlopen(NULL)): no ``ctypes.util.find_library``,
    which runs ldconfig in a subprocess, while the process is not hardened yet."""
    return ctypes.CDLL(None, use_errno=True)


def harden_process() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):  # pragma: no cover - unusual platforms
        log.debug("could not disable core dumps")
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except OSError:  # pragma: no cover
            log.debug("could not clear the dumpable flag")


def is_dumpable() -> bool:
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def tracer_pid() -> int:
    """The pid of the process tracing this one (0: none; 0 also where /proc is not there)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
