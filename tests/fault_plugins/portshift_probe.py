"""A test-only plugin that reports, from inside a running `portshift run`, what the process looks
like: core-dump limit, dumpable flag, argv and environment names (never values)."""

from __future__ import annotations

import json
import os
import resource

from portshift import hookimpl
from portshift.hardening import is_dumpable


@hookimpl
def job_started(job, resumed):  # noqa: ANN001, ANN201
    out = os.environ["PORTSHIFT_TEST_PROBE_OUT"]
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    with open(out, "w") as f:
        json.dump({"core": list(resource.getrlimit(resource.RLIMIT_CORE)), "dumpable": is_dumpable(), "cmdline": cmdline}, f)
