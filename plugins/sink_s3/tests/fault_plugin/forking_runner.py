"""Runs ``portshift`` many times at the cost of one interpreter start (a fork server for tests).

Started once by ``tests/test_crash_resume.py`` with the environment every run shares; it imports
portshift, boto3 and the S3 sink (about 60% of the CPU a short ``python -m portshift run`` costs
on this machine) and then, for each request line on stdin (JSON ``{"argv": [...], "env": {...},
"out": path, "err": path}``), forks. The child applies ``env`` on top of the shared environment,
sends its stdout/stderr to the two files, and calls ``portshift.cli.main(argv)`` — what
``python -m portshift`` calls — in its own process: plugins are discovered, the job file read, the
state DB opened and the S3 client built there, as in any run. Nothing is loaded into the server
beyond imports (no plugin registered, no state, no client, no thread), so every child starts from
the same clean state. The server answers each request with one line: the child's exit code, or
minus the signal that ended it (``-9`` for SIGKILL), as ``subprocess`` reports it.

A child that runs longer than ``PORTSHIFT_RUNNER_TIMEOUT`` seconds (default 300) is killed by
its own SIGALRM (reported as ``-14``).
"""

from __future__ import annotations

import json
import os
import signal
import sys

# This folder holds the fault plugin's source too: plugins must come from PYTHONPATH (the test's
# copy, registered there as a distribution), never from next to this script.
if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]

import portshift_sink_s3.sink  # noqa: F401 - boto3 and the sink, imported here so that children need not

import portshift.cli
import portshift.cli.run_cmd
import portshift.default_plugins.example_source
import portshift.pipeline


def child(request: dict[str, object]) -> None:
    os.environ.update({str(k): str(v) for k, v in dict(request.get("env") or {}).items()})  # type: ignore[call-overload]
    for fd, path in ((1, request["out"]), (2, request["err"])):
        target = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.alarm(int(os.environ.get("PORTSHIFT_RUNNER_TIMEOUT", "300")))
    code = 0
    try:
        portshift.cli.main([str(a) for a in request["argv"]])  # type: ignore[attr-defined]
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception in a real run
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sys.stdout.write(f"{code}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
