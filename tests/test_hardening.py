"""Process hardening: a running export cannot dump core, is not dumpable (no same-uid ptrace or
/proc/<pid>/mem), and holds no credential in argv when given them on stdin."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .support import PORTSHIFT

HERE = Path(__file__).parent


def test_a_running_export_is_hardened(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "portshift_probe.py").write_text((HERE / "fault_plugins" / "portshift_probe.py").read_text())
    info = site / "portshift_probe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\nprobe = portshift_probe\n")
    job = tmp_path / "job.toml"
    job.write_text(f'[source]\ntype = "example"\ncount = 1\n\n[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n')
    probe = tmp_path / "probe.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "PORTSHIFT_LOAD_PLUGINS": "portshift-probe",
        "PORTSHIFT_TEST_PROBE_OUT": str(probe),
    }
    r = subprocess.run(
        [
            "sh",
            "-c",
            'ulimit -c unlimited && exec "$@"',
            "sh",
            *PORTSHIFT,
            "run",
            "--config",
            str(job),
            "--state",
            str(tmp_path / "s.db"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(probe.read_text())
    assert seen["core"] == [0, 0], "core dumps are still possible"
    assert seen["dumpable"] is False, "the process is still dumpable"
