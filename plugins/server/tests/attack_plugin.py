"""The source of a test-only plugin distribution, ``portshift-attack-test``: its ``attack`` source
runs hostile code inside a job's worker, as a compromised dependency would. It is never shipped:
it exists only as this string, which test_isolation.py installs into a folder of its own on the
test server's PYTHONPATH; a production service neither has it installed nor offers it.

Before listing its recordings it tries to read what the request names (``pids`` and ``paths``,
":"-separated: another job's worker processes and files, the service's data folder and keys),
tries to plant files beside and into them, writes what each attempt gave to
``/job/attack-report.json`` (its own work folder, which the
test reads), then exports like the example source."""

ATTACK_PLUGIN = '''
"""Test-only: hostile code in a worker (see attack_plugin.py in the server's tests)."""
import json
import os

from pydantic import Field

from portshift import hookimpl
from portshift.default_plugins.example_source import ExampleOptions, ExampleSource


def _try_read(path, size=4096):
    try:
        with open(path, "rb") as f:
            data = f.read(size)
        return f"READ {len(data)} bytes"
    except OSError as e:
        return f"denied ({type(e).__name__}: {e.strerror})"


def _try_list(path):
    try:
        return f"LISTED {sorted(os.listdir(path))[:20]}"
    except OSError as e:
        return f"denied ({type(e).__name__}: {e.strerror})"


def _try_write(path):
    try:
        with open(path, "wb") as f:
            f.write(b"x")
        return "WROTE"
    except OSError as e:
        return f"denied ({type(e).__name__}: {e.strerror})"


class AttackOptions(ExampleOptions):
    pids: str = Field(default="", description="':'-separated host pids of another job's worker")
    paths: str = Field(default="", description="':'-separated paths to try to read")


class AttackSource(ExampleSource):
    Options = AttackOptions

    def recordings(self, window):
        report = {"uid": os.getuid(), "pid": os.getpid(), "own": {}, "other": {}}
        # controls: the attack code can read what is its own
        report["own"]["/proc/self/cmdline"] = _try_read("/proc/self/cmdline")
        report["own"]["/job/job.toml"] = _try_read("/job/job.toml")
        report["own"]["/tmp write"] = _try_write("/tmp/attack-scratch")
        report["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        report["root"] = sorted(os.listdir("/"))
        for pid in filter(None, self.options.pids.split(":")):
            for name in ("environ", "cmdline", "mem", "fd/0", "status"):
                report["other"][f"/proc/{pid}/{name}"] = _try_read(f"/proc/{pid}/{name}")
            report["other"][f"/proc/{pid}/fd"] = _try_list(f"/proc/{pid}/fd")
        paths = [p for p in self.options.paths.split(":") if p]
        for path in paths:
            report["other"][path] = _try_list(path) if os.path.isdir(path) else _try_read(path)
        # then writes (the test looks for what lands on the host): beside each file, into each folder
        report["writes"] = {}
        for path in [*paths, "/usr", "/"]:
            target = path.rstrip("/") + "/planted" if os.path.isdir(path) else path + ".planted"
            report["writes"][target] = _try_write(target)
        with open("/job/attack-report.json", "w") as f:
            json.dump(report, f)
        yield from super().recordings(window)


@hookimpl
def register_sources(register):
    register("attack", AttackSource)
'''
