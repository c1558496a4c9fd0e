"""Ending the ``portshift`` process without tearing the interpreter down.

When a command is done, everything that matters is on disk or in the bucket: the state database
closed, the manifest stored, the summary printed. What a normal interpreter exit still does after
that is free every object of every module one by one (boto3's and the SDKs' service models, the
plugins, the state code): about 0.1 s of CPU per process on these machines, at the end of every
run and of every worker of ``run --workers``. So the console script ends the way the interpreter
would, minus that teardown: the threads that must finish are joined (``threading``'s own shutdown,
which also stops idle thread pools), the ``atexit`` callbacks run (logging flushes and closes its
handlers, temporary directories are removed), standard output and error are flushed, and only then
``os._exit``. Anything unusual (a non-integer exit status, a Python without these hooks) takes the
normal ``sys.exit``. Only the console script does this: ``main(argv)`` called from Python code
(tests, a wrapper) returns or raises as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import NoReturn


def end_process(code: object, *, forked: bool = False) -> NoReturn:
    """Exit with ``code`` (what ``SystemExit`` carried): quickly when it is an exit status.
    ``forked``: a worker forked by ``run --workers`` (:func:`_end_forked`)."""
    if code is None:
        code = 0
    shutdown = getattr(threading, "_shutdown", None)
    if forked:
        _end_forked(code if isinstance(code, int) else 1, shutdown)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    usual = shutdown is None or run_exitfuncs is None or threading.current_thread() is not threading.main_thread()
    if usual or not isinstance(code, int):
        sys.exit(code)
    shutdown()  # waits for non-daemon threads, as the interpreter's exit does first
    run_exitfuncs()
    _flush()
    os._exit(code & 0xFF)  # what the C exit() makes of any int, as sys.exit would


def _end_forked(code: int, shutdown: object) -> NoReturn:
    """A forked worker ends the same way, but without the ``atexit`` callbacks it inherited (they
    are its parent's: a temporary folder of the parent's would be removed under it; logging's is
    run here) and never by ``sys.exit``, which would unwind into the parent's stack it copied."""
    try:
        if callable(shutdown):
            shutdown()
        logging.shutdown()
        _flush()
    finally:
        os._exit(code & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
