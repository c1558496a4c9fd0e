"""Four `portshift worker` processes (through `portshift run --workers 4`) export the Chorus
simulator into moto over HTTPS, sharing the job through one state file: one manifest, every call
exactly once, every object re-hashed with plain boto3 (docs/scaling.md)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from portshift.testing import PORTSHIFT

from .conftest import Canaries, run_env
from .test_end_to_end import export, manifest_entries

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

TOKEN = "s3-workers-" + "t" * 24
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def test_four_workers_export_into_s3_once_each(
    tmp_path: Path, moto: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries
) -> None:
    calls = int(os.environ.get("PORTSHIFT_WORKER_CALLS", "120"))
    spec = chorus.TenantSpec(
        calls=calls, seed=3, start=NOW - timedelta(days=20), end=NOW - timedelta(days=1), media_size=6_000,
        unprocessed_ratio=0.0, no_show_ratio=0.0, zero_duration_ratio=0.0, private_ratio=0.0, other_type_ratio=0.0,
    )  # fmt: skip
    with chorus.ChorusSimulator(chorus.Tenant(spec), token=TOKEN) as sim:
        job = tmp_path / "job.toml"
        job.write_text(
            f'[job]\ntransfers = 2\nsince = "{(NOW - timedelta(days=21)).date()}"\nuntil = "{NOW.date()}"\n\n'
            f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
            "requests_per_second = 0\n\n"
            f'[sink]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "exports/acme"\nregion = "us-east-1"\n'
            f'endpoint_url = "{moto.url}"\nca_bundle = "{certs.ca_pem}"\naddressing_style = "path"\n'
        )
        env = run_env(canaries)
        env.update({"PORTSHIFT_CHORUS_TOKEN": TOKEN, "PORTSHIFT_LOAD_PLUGINS": "portshift-sink-s3,portshift-source-chorus"})
        argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--workers", "4"]
        r = subprocess.run([*argv, "--no-progress", "--report", "json"], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        exportable = len(sim.tenant.exportable())
        with sim.stats.lock:
            fetched = Counter(
                p.split("/")[4] for _, _, p, _ in sim.stats.seen if p.startswith("/api/v1/conversations/") and p.count("/") == 4
            )
    report = json.loads(r.stdout)
    assert report["status"] == "complete" and report["recordings"]["exported"] == exportable
    assert max(fetched.values()) == 1, fetched.most_common(3)  # no call's media fetched by two workers
    root, objects = export(admin, bucket)
    entries = manifest_entries(admin, bucket, root)
    assert len([k for k in entries if k.endswith("/media.bin") or "/media." in k]) == exportable
    for path, digest in entries.items():  # every object the manifest lists, re-hashed independently
        body = admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, path
    stored = {k[len(root) + 1 :] for k in objects if k.startswith(f"{root}/") and k != f"{root}/portshift-manifest.txt"}
    assert stored == set(entries)  # nothing stored twice under another name, nothing left out
