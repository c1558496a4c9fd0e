"""The handover over a plain stream (``python -m portshift.handover --stream``), as the Kubernetes
launcher uses it through the attach API: the worker hardens itself, prints the ready line, and
only then reads its credentials from standard input; a real export completes with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from portshift_server.kubernetes_launcher import READY, worker_argv

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

TOKEN = "stream-handover-" + "s" * 20
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def test_a_stream_worker_says_ready_first_then_takes_its_credentials_and_exports(tmp_path: Path) -> None:
    spec = chorus.TenantSpec(calls=5, seed=5, start=NOW - timedelta(days=5), end=NOW - timedelta(days=1), private_ratio=0.0)
    with chorus.ChorusSimulator(chorus.Tenant(spec), token=TOKEN) as sim:
        job = tmp_path / "job.toml"
        job.write_text(
            f'[job]\nsince = "{(NOW - timedelta(days=6)).date()}"\n\n'
            f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\nrequests_per_second = 0\n\n'
            f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
        argv = [sys.executable, "-m", "portshift.handover", "--stream", "run", "--config", str(job)]
        argv += ["--state", str(tmp_path / "s.db"), "--secrets-from-stdin", "--no-progress"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first.decode().strip() == READY  # nothing is read from stdin before this line
        proc.stdin.write(json.dumps({"source": {"token": TOKEN}}).encode())
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() only reads now
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert TOKEN not in out.decode() + err.decode()
    roots = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(roots) == 1
    check = subprocess.run(["sha256sum", "-c", "portshift-manifest.txt"], cwd=roots[0], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_stream_worker_given_nothing_says_so_and_exports_nothing(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "portshift.handover", "--stream", "run", "--config", str(tmp_path / "job.toml")]
    argv += ["--secrets-from-stdin"]
    proc = subprocess.run(argv, input=b"", capture_output=True, timeout=60)
    assert proc.stdout.decode().splitlines()[:1] == [READY]
    assert proc.returncode == 2, proc.stderr.decode()
    assert "nothing on standard input" in proc.stderr.decode()
    assert not (tmp_path / "out").exists()


def test_the_kubernetes_worker_is_started_through_the_stream_handover_with_the_runs_own_url() -> None:
    from .test_kubernetes_launcher import settings

    got = worker_argv(settings())
    assert got[:4] == ["python", "-m", "portshift.handover", "--stream"]
    assert "--secrets-from-stdin" in got and got[got.index("--state") + 1] == settings().state_url
    own = "postgresql://ps_job_abc@db.example.internal:5432/portshift?sslmode=verify-full"
    assert worker_argv(settings(), own)[worker_argv(settings(), own).index("--state") + 1] == own
