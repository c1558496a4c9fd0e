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
from .test_end_to_end import manifest_entries

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
    objects = {  # every object, past the 1,000 keys of one listing page
        o["Key"]: o["Size"]
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    }
    (manifest,) = [k for k in objects if k.endswith("/portshift-manifest.txt")]
    root = manifest.rsplit("/", 1)[0]
    entries = manifest_entries(admin, bucket, root)
    assert len([k for k in entries if k.endswith("/media.bin") or "/media." in k]) == exportable
    for path, digest in entries.items():  # every object the manifest lists, re-hashed independently
        body = admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, path
    stored = {k[len(root) + 1 :] for k in objects if k.startswith(f"{root}/") and k != f"{root}/portshift-manifest.txt"}
    assert stored == set(entries)  # nothing stored twice under another name, nothing left out


def test_a_worker_killed_mid_upload_has_its_open_upload_aborted_by_the_worker_still_running(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """Worker A holds both recordings; worker B, started next to it, has nothing to claim. A is
    SIGKILLed while part 2 of a multipart upload is in flight: B finds A dead (its lock is free),
    takes its recordings, aborts the upload A left open — while the job goes on, not at the next
    run — and completes the export."""
    import signal
    import sqlite3
    import threading
    import time

    from .test_end_to_end import write_job

    state = tmp_path / "state.db"
    procs: list[subprocess.Popen[bytes]] = []
    killed = threading.Event()

    def workers_registered() -> int:
        try:
            with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
                return db.execute("select count(*) from workers where ended_at is null").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    def rule(req: Any) -> Any:
        if killed.is_set() or "media.mp3" not in req.target or "partNumber=2" not in req.target:
            return None
        deadline = time.monotonic() + 30
        while workers_registered() < 2 and time.monotonic() < deadline:  # B is there, waiting
            time.sleep(0.05)
        os.kill(procs[0].pid, signal.SIGKILL)  # A: no clean-up at all
        killed.set()
        return tls_proxy.Action(close=True)

    tls_proxy.rule = rule
    job = write_job(tmp_path, bucket, tls_proxy.url, certs.ca_pem, count=2)
    job.write_text(job.read_text().replace("transfers = 2", "transfers = 1"))
    env = run_env(canaries)
    env["PORTSHIFT_LEASE"] = "30"  # B must find A dead by its lock, not by a lease running out
    argv = [*PORTSHIFT, "worker", "--config", str(job), "--state", str(state), "--no-progress", "--log-level", "debug"]
    procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 30
    while workers_registered() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    _, err_a = procs[0].communicate(timeout=120)
    _, err_b = procs[1].communicate(timeout=120)
    assert procs[0].returncode == -signal.SIGKILL, err_a.decode()[-2000:]
    assert procs[1].returncode == 0, err_b.decode()[-3000:]
    text = err_b.decode()
    assert "a worker of this job stopped" in text and "cleaning up 1 operations a stopped worker" in text, text[-3000:]
    assert pending() == []  # the upload A left open was aborted, none other left
    with sqlite3.connect(state) as db:
        assert db.execute("select count(*) from sink_journal").fetchone() == (0,)
        assert db.execute("select status, count(*) from recordings group by 1").fetchall() == [("done", 2)]
    objects = {o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])}
    (manifest,) = [k for k in objects if k.endswith("/portshift-manifest.txt")]
    root = manifest.rsplit("/", 1)[0]
    for path, digest in manifest_entries(admin, bucket, root).items():
        body = admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, path
