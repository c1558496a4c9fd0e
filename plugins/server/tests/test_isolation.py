"""Jobs are isolated from each other and from the service (issue 17), through the real service:

- with the sandbox launcher (bubblewrap, one host uid per job), hostile code inside one job's
  worker (the test-only ``attack`` source, attack_plugin.py) cannot read another running job's
  processes or files, the service's data folder, database or keys; the other job completes and
  its manifest verifies with ``sha256sum -c``;
- the job id (the capability to read, cancel and resume a job) is in no worker's argv,
  environment or file name, in no file of its work folder, and the service's log keeps a short
  prefix of it only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from portshift_source_chorus.simulator import ChorusSimulator

from .attack_plugin import ATTACK_PLUGIN
from .conftest import SERVICE_CONFIG, Certs, Server, canary_value, find_canary, start_job, start_server, wait_status

ATTACK_OFFER = """
[source.attack]
label = "Attack (tests only)"
fields = {{ pids = "string", paths = "string", count = "integer" }}
"""


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.fixture(scope="module")
def sandbox_server(certs: Certs, plugin_path: Path, chorus: ChorusSimulator, worker_python: Path) -> Iterator[Server]:
    """The service with its default launcher, the sandbox, in a folder other users may pass
    through (the pytest folders are closed to them): its plugins there too."""
    root = Path(tempfile.mkdtemp(prefix="portshift-sandbox-"))
    os.chmod(root, 0o755)
    plugins = root / "plugins"
    shutil.copytree(plugin_path, plugins)
    (plugins / "portshift_attack_test.py").write_text(textwrap.dedent(ATTACK_PLUGIN))
    info = plugins / "portshift_attack_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-attack-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\nattack_test = portshift_attack_test\n")
    subprocess.run(["chmod", "-R", "a+rX", str(plugins)], check=True)
    config = SERVICE_CONFIG.replace(
        'sources = ["chorus", "canary", "example"]', 'sources = ["chorus", "canary", "example", "attack"]'
    )
    load = "portshift-server,portshift-canary-test,portshift-source-chorus,portshift-attack-test"
    server = start_server(
        certs,
        plugins,
        chorus,
        root / "service",
        "--max-jobs-per-client",
        "4",
        config_text=config + ATTACK_OFFER,
        env_extra={"PORTSHIFT_LOAD_PLUGINS": load},
        launcher=("--launcher", "sandbox", "--worker-python", str(worker_python)),
    )
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def sandbox_tree(server: Server, job_id: str) -> list[int]:
    """The job's bwrap process and everything under it (the worker and its hardened child)."""
    top = server.worker_of(job_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tree = descendants(top)
        if len(tree) >= 2 and any(b"portshift.handover" in Path(f"/proc/{p}/cmdline").read_bytes() for p in tree):
            return [top, *tree]
        time.sleep(0.05)
    raise AssertionError("the sandboxed worker did not start")


def test_hostile_code_in_one_job_reaches_nothing_of_another_job_or_the_service(sandbox_server: Server) -> None:
    s = sandbox_server
    c = s.client()
    token_b = canary_value("victim")
    b = start_job(c, {"source": {"type": "canary", "token": token_b, "count": 6, "delay": 0.5}, "sink": {"type": "local"}})
    tree_b = sandbox_tree(s, b["id"])
    work_b, export_b = s.work_dir(b["id"]), s.local_root / s.work_dir(b["id"]).name
    targets = [
        work_b,
        work_b / "job.toml",
        work_b / "state.db",
        export_b,
        s.data_dir,
        s.data_dir / "service.db",
        s.data_dir / "jobs",
        s.data_dir / "jobs" / ".names.key",
        s.local_root,
        s.certs.key,
        s.data_dir.parent / "server-secret",
    ]
    attack = {"type": "attack", "count": 1, "pids": ":".join(map(str, tree_b)), "paths": ":".join(map(str, targets))}
    a = start_job(c, {"source": attack, "sink": {"type": "local"}})
    tree_a = sandbox_tree(s, a["id"])
    uid_a, uid_b = host_uid(tree_a[-1]), host_uid(tree_b[-1])
    done_a = wait_status(c, a["id"], ("complete", "failed"))
    assert done_a["status"] == "complete", done_a
    report = json.loads((s.work_dir(a["id"]) / "attack-report.json").read_text())

    # the controls: the attack code ran, as its job's own uid, and could read and write what is its own
    assert report["uid"] == uid_a and uid_a != uid_b and 0 not in (uid_a, uid_b)
    assert all(v.startswith(("READ", "WROTE")) for v in report["own"].values()), report["own"]
    # everything else: nothing. Reads of B's processes and of every file: refused or not there
    assert len(report["other"]) == 6 * len(tree_b) + len(targets)
    # (the exports folder exists for it only as the way to its own export folder: that alone is listed)
    own_export = {str(s.local_root): f"LISTED {[s.work_dir(a['id']).name]}"}
    reached = {k: v for k, v in report["other"].items() if not v.startswith("denied") and own_export.get(k) != v}
    assert not reached, reached
    # nothing it wrote reached the host (a write may land in its own tmpfs only)
    planted = [p for p in report["writes"] if Path(p).exists()]
    assert not planted, planted
    assert report["writes"]["/usr/planted"].startswith("denied") and report["writes"]["/planted"].startswith("denied")
    # its own PID namespace: a handful of its own processes, none of B's host pids
    assert len(report["visible_pids"]) <= 4 and not set(tree_b) & set(report["visible_pids"]), report["visible_pids"]
    lines = [f"  {k}: {v}" for k, v in [*report["other"].items(), *report["writes"].items()]]
    print("\nattack from job A:\n" + "\n".join(lines))
    assert token_b not in json.dumps(report)

    # B was not disturbed: it completes and its manifest verifies
    done_b = wait_status(c, b["id"], ("complete", "failed"))
    assert done_b["status"] == "complete", done_b
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "portshift-manifest.txt"], cwd=export_b / done_b["export_root"], capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def assert_the_job_id_stays_in_the_service(server: Server) -> None:
    c = server.client()
    token = canary_value("idle")
    job = start_job(c, {"source": {"type": "canary", "token": token, "count": 4, "delay": 0.3}, "sink": {"type": "local"}})
    job_id = job["id"].encode()
    top = server.worker_of(job["id"])
    seen = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and c.get(f"/api/jobs/{job['id']}").json()["status"] in ("starting", "running"):
        for pid in (top, *descendants(top)):
            for name in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{name}").read_bytes()
                except OSError:
                    continue
                seen += 1
                assert job_id not in data, f"the job id is in /proc/{pid}/{name}"
                assert not find_canary(data, [token]), f"the credential is in /proc/{pid}/{name}"
        time.sleep(0.05)
    assert seen >= 4, "the worker's processes were read while they ran"
    assert wait_status(c, job["id"], ("complete", "failed"))["status"] == "complete"
    work, export = server.work_dir(job["id"]), server.local_root / server.work_dir(job["id"]).name
    files = [p for root in (server.data_dir, server.local_root) for p in root.rglob("*")]
    assert (work / "state.db").is_file() and any(export.rglob("portshift-manifest.txt"))
    assert not [p for p in files if job["id"] in str(p)], "the job id names a file"
    for p in [*work.rglob("*"), *export.rglob("*")]:
        if p.is_file():
            assert job_id not in p.read_bytes(), f"the job id is in {p}"
    time.sleep(0.3)
    log = server.stderr.read_bytes()
    assert job_id[:6] in log, "the service's log names the job by a short prefix"
    assert job_id not in log, "the service's log keeps no more than a short prefix of the job id"


def test_the_job_id_stays_in_the_service_with_the_sandbox(sandbox_server: Server) -> None:
    assert_the_job_id_stays_in_the_service(sandbox_server)


def test_the_job_id_stays_in_the_service_unisolated(server: Server) -> None:
    assert_the_job_id_stays_in_the_service(server)


def _serve(certs: Certs, tmp_path: Path, *extra: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
           python: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = [python or sys.executable, "-m", "portshift", "serve", "--cert", str(certs.cert), "--key", str(certs.key)]
    return subprocess.run(
        [*(prefix or []), *argv, "--port", "1", "--data-dir", str(tmp_path / "d"), "--launcher", "sandbox", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")},
        stdin=subprocess.DEVNULL,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("portshift: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_the_service_refuses_a_sandbox_the_host_cannot_give(certs: Certs, tmp_path: Path, worker_python: Path) -> None:
    # no bubblewrap on the PATH
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    line = one_line(_serve(certs, tmp_path, env={**env, "PATH": str(empty)}))
    assert "needs bubblewrap (bwrap)" in line and "make setup" in line and "--launcher unisolated" in line
    # not started as root: no host uid per job
    shared = Path(tempfile.mkdtemp(prefix="portshift-nonroot-"))
    try:
        os.chmod(shared, 0o777)
        certs_copy = Certs(certs.ca, certs.ca_pem, shared / "cert.pem", shared / "key.pem")
        for src, dst in ((certs.cert, certs_copy.cert), (certs.key, certs_copy.key)):
            shutil.copy(src, dst)
            os.chmod(dst, 0o644)
        as_user = ["setpriv", "--reuid=2100001", "--regid=2100001", "--clear-groups"]
        line = one_line(_serve(certs_copy, shared, prefix=as_user, python=str(worker_python)))
        assert "must start as root" in line, line
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    # a Python the job uids cannot run (this machine's venv sits on a base interpreter in /root, say)
    line = one_line(_serve(certs, tmp_path, "--worker-python", str(tmp_path / "no-python")))
    assert "the worker's Python" in line, line


def test_a_sandboxed_job_cancels_cleanly_and_resumes_under_a_new_uid(sandbox_server: Server) -> None:
    """Cancel reaches the sandboxed worker (SIGTERM to the process that collected the credentials),
    and a resume, which may get another uid from the pool, takes over the job's folders."""
    from . import test_jobs

    test_jobs.test_cancel_stops_the_worker_cleanly_and_the_job_can_be_resumed(sandbox_server)
