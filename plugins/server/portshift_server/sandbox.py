"""The sandbox launcher, the service's default: each worker in bubblewrap, under its own host uid.

For each job the service (started as root) takes a host uid from a pool and runs
``setpriv --reuid=U --regid=U --clear-groups bwrap ... -- python -m portshift.handover run ...``.
The worker then has

- its own host uid (no other job's processes or files are its own, ptrace and /proc say no),
- its own user, mount, PID, IPC, UTS and cgroup namespaces (``--unshare-all``; the network is
  shared: the job talks to the customer's source and bucket), no capabilities, no new privileges,
- a root that is an empty tmpfs with, read-only, the system (``/usr``, ``/etc``) and the Python
  installation and packages the worker runs; ``/proc`` of its own PID namespace (no other
  process of the host exists for it), a minimal ``/dev``, an empty tmpfs on ``/tmp``,
- writable: its own work folder at ``/job`` (job file, state) and, for the ``local`` trial sink
  only, that job's own export folder. The service's data folder, its keys and database, and
  other jobs' folders are not in its mount namespace at all; operator paths that happen to lie
  under a read-only path (``hidden``) are covered with an empty tmpfs or /dev/null.

``check_sandbox`` refuses to start the service where the kernel or the host cannot give this, in
one line naming what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from portshift.errors import ConfigError

from . import handover
from .launcher import JobSpec, ProcessLauncher

log = logging.getLogger("portshift.server.sandbox")

#: host uids the sandboxed workers run as (no account uses them; one per running job)
DEFAULT_UIDS = range(2_000_000, 2_000_256)
SYSTEM_RO = ("/usr", "/etc")
UNISOLATED_HINT = "--launcher unisolated runs without isolation, for development only"
#: the sandbox's own /tmp (an empty tmpfs inside it), its HOME and TMPDIR
SANDBOX_TMP = Path("/tmp")  # noqa: S108 - a fresh tmpfs of the job's own, not the host's /tmp


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_sandbox(bwrap: str | None = None) -> str:
    """The bwrap to use; ConfigError (one line: the missing setting) where there is none."""
    bwrap = bwrap or shutil.which("bwrap")
    if not bwrap:
        raise ConfigError(
            f"the sandbox launcher needs bubblewrap (bwrap): run make setup or apt-get install bubblewrap; {UNISOLATED_HINT}"
        )
    if not shutil.which("setpriv"):
        raise ConfigError(f"the sandbox launcher needs setpriv (util-linux); {UNISOLATED_HINT}")
    if os.geteuid() != 0:
        raise ConfigError(f"the sandbox launcher must start as root, to run each job under its own host uid; {UNISOLATED_HINT}")
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        raise ConfigError(f"user namespaces are off: sysctl user.max_user_namespaces is 0; {UNISOLATED_HINT}")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        raise ConfigError(
            f"unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone is 0; {UNISOLATED_HINT}"
        )
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        raise ConfigError(
            "AppArmor blocks unprivileged user namespaces: sysctl kernel.apparmor_restrict_unprivileged_userns is 1; "
            + UNISOLATED_HINT
        )
    probe = subprocess.run(
        ["setpriv", f"--reuid={DEFAULT_UIDS[-1]}", f"--regid={DEFAULT_UIDS[-1]}", "--clear-groups", bwrap,
         "--unshare-all", "--share-net", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
         "--", "/usr/bin/true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise ConfigError(f"bubblewrap cannot create its namespaces on this host ({why}); {UNISOLATED_HINT}")
    return bwrap


_DISCOVER = """
import importlib.metadata, importlib.util, json, os, sys
paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
paths.update(p for p in sys.path if p and os.path.isdir(p))
names = {"portshift"} | {ep.module.split(".")[0] for ep in importlib.metadata.entry_points(group="portshift")}
for name in names:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin:
        paths.add(os.path.dirname(spec.origin) if spec.origin.endswith("__init__.py") else spec.origin)
print(json.dumps(sorted(paths)))
"""


def python_paths(python: str, env: dict[str, str]) -> list[Path]:
    """What the worker's interpreter reads: its venv, its base installation, its sys.path, and
    the folders of portshift and of every installed portshift plugin (editable installs too)."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", _DISCOVER] if "PYTHONPATH" not in env else [python, "-c", _DISCOVER],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL, check=True,
        ).stdout  # fmt: skip
        found = [Path(p) for p in json.loads(out)]
    except (OSError, subprocess.SubprocessError, ValueError):
        raise ConfigError(f"the worker's Python ({python}) does not start or has no portshift") from None
    kept: list[Path] = []
    for p in sorted((p.resolve() for p in found), key=lambda p: len(p.parts)):
        if p == Path("/") or not p.exists():
            continue
        if any(p == q or q in p.parents for q in [*kept, *map(Path, SYSTEM_RO)]):
            continue
        kept.append(p)
    return kept


#: where the sandbox shows the state database's CA (the only file of the host it needs to trust it)
SANDBOX_DB_CA = "/run/portshift/db-ca.pem"


def sandboxed_state(target: str | Path) -> tuple[str | Path, list[str]]:
    """The state target as the sandboxed worker sees it, and the binds it needs: a state file is
    the job's own ``/job/state.db``; a ``postgresql://`` URL (the run's own role, no password)
    stays, with its ``sslrootcert=`` file shown read-only at :data:`SANDBOX_DB_CA`."""
    text = str(target)
    if not text.startswith(("postgresql://", "postgres://")):
        return Path("/job/state.db"), []
    import urllib.parse

    url = urllib.parse.urlsplit(text)
    query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
    binds: list[str] = []
    out = []
    for k, v in query:
        if k == "sslrootcert" and v not in ("system", ""):
            binds = ["--ro-bind", str(Path(v).resolve()), SANDBOX_DB_CA]
            v = SANDBOX_DB_CA
        out.append((k, v))
    return urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(out, safe="/"))), binds


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


class SandboxLauncher(ProcessLauncher):
    """See the module's docstring. ``hidden``: the operator's paths (data folder, TLS key, key
    files) to cover should they lie under a path the sandbox shows read-only."""

    name = "sandbox"

    def __init__(
        self, bwrap: str, uids: Iterable[int] = DEFAULT_UIDS, hidden: Iterable[Path] = (), python: str | None = None
    ) -> None:
        self.bwrap = bwrap
        self.python = python or sys.executable
        self._free = list(uids)
        self._taken: dict[str, int] = {}
        self._lock = threading.Lock()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG")}
        self.read_only = python_paths(self.python, env)
        self.hidden = [Path(p).resolve() for p in hidden]

    def probe(self) -> None:
        """Start the worker's Python in a sandbox as a pool uid, as a job would; ConfigError (one
        line) when that fails, e.g. when the uid cannot read the Python installation."""
        uid = self._free[-1]
        spec = JobSpec("probe", Path("/"), Path("/job.toml"), Path("/state.db"))
        args = self._base_args()
        r = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", self.bwrap, *args,
             "--", self.python, "-c", "import portshift.handover"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=spec.env(home=SANDBOX_TMP),
        )  # fmt: skip
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no message"])[-1][:200]
            raise ConfigError(
                f"a sandboxed worker cannot start here ({why}); the Python the workers run must be readable by every user"
                f" (--worker-python); {UNISOLATED_HINT}"
            )

    @staticmethod
    def reachable(own: Iterable[Path]) -> None:
        """Let the job uids pass through the service's own folders (mode 0711: never listed), so
        that bwrap, running as a job's uid, can bind that job's own folder inside them; each
        parent above must already let others pass (ConfigError, one line, when one does not)."""
        for folder in own:
            folder = folder.resolve()
            os.chmod(folder, 0o711)  # noqa: S103 - others may pass, never list; each job's folder stays 0700
            for d in folder.parents:
                if not d.stat().st_mode & 0o001:
                    raise ConfigError(f"the sandboxed jobs cannot reach {folder}: {d} is closed to other users (chmod o+x it)")

    def _take_uid(self, spec: JobSpec) -> int:
        with self._lock:
            if spec.job_id in self._taken:
                return self._taken[spec.job_id]
            if not self._free:
                raise OSError("no free sandbox uid")
            uid = self._free.pop(0)
            self._taken[spec.job_id] = uid
            return uid

    def released(self, spec: JobSpec) -> None:
        with self._lock:
            uid = self._taken.pop(spec.job_id, None)
            if uid is not None:
                self._free.append(uid)

    def _base_args(self) -> list[str]:
        """Namespaces, the read-only system and Python, covers over hidden paths, /proc, /dev, /tmp."""
        args = ["--unshare-all", "--share-net", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        args += [
            "--hostname",
            "portshift-job",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            str(SANDBOX_TMP),
        ]  # before the binds
        for p in SYSTEM_RO:
            args += ["--ro-bind", p, p]
        for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
            link = Path("/") / name
            if link.is_symlink():
                args += ["--symlink", os.readlink(link), str(link)]
            elif link.is_dir():
                args += ["--ro-bind", str(link), str(link)]
        for p in self.read_only:
            args += ["--ro-bind", str(p), str(p)]
        shown = [Path(p) for p in SYSTEM_RO] + self.read_only
        for h in self.hidden:
            if any(h == s or s in h.parents for s in shown):
                args += ["--tmpfs", str(h)] if h.is_dir() else ["--ro-bind", "/dev/null", str(h)]
        return args

    def bwrap_args(self, spec: JobSpec) -> list[str]:
        """The whole sandbox of one job: ``_base_args``, plus its work folder at /job and, for the
        local sink, its export folder (both owned by the job's uid)."""
        args = [*self._base_args(), "--bind", str(spec.work_dir), "/job"]
        if spec.export_dir is not None:
            args += ["--bind", str(spec.export_dir), str(spec.export_dir)]
        return [*args, "--remount-ro", "/", "--chdir", "/job"]

    def command(self, spec: JobSpec) -> tuple[list[str], dict[str, str], Path, list[int]]:
        uid = self._take_uid(spec)
        try:
            _chown_tree(spec.work_dir, uid)
            if spec.export_dir is not None:
                spec.export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                _chown_tree(spec.export_dir, uid)
        except OSError:
            self.released(spec)
            raise
        state, ca_binds = sandboxed_state(spec.state_file)
        worker = spec.argv(Path("/job/job.toml"), state, python=self.python)  # type: ignore[arg-type]
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
        args = self.bwrap_args(spec)
        args[-4:-4] = ca_binds  # before the final remount and chdir
        argv += [self.bwrap, *args, "--", *worker]
        return argv, spec.env(home=SANDBOX_TMP), Path("/"), []

    def accept(self, proc: subprocess.Popen[bytes], spec: JobSpec, pid: int, uid: int) -> bool:
        with self._lock:
            mine = self._taken.get(spec.job_id)
        return uid == mine and pid != proc.pid and handover.descends_from(pid, proc.pid, depth=4)
