"""`portshift run` as a real subprocess into moto over HTTPS, then an independent check: every
object the manifest lists is downloaded with plain boto3 and re-hashed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from portshift.errors import ExitCode
from portshift.testing import PORTSHIFT

from .conftest import Canaries, Pending, run_env

MEDIA = 10 * 1024 * 1024 + 7  # three parts of 5 MiB (the last one 7 bytes)


def write_job(tmp_path: Path, bucket: str, endpoint: str, ca: Path, count: int = 3, retries: int = 3) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f"[job]\ntransfers = 2\nretries = {retries}\n\n"
        f'[source]\ntype = "example"\ncount = {count}\nmedia_size = {MEDIA}\n\n'
        f'[sink]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "exports/acme"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\nca_bundle = "{ca}"\naddressing_style = "path"\npart_size = "5MiB"\n'
        'allowed_regions = ["us-*"]\n'
    )
    return job


def run_args(job: Path, state: Path, canaries: Canaries) -> tuple[list[str], dict[str, str]]:
    env = run_env(canaries)
    return [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--log-level", "debug", "--no-progress"], env


def run(job: Path, state: Path, canaries: Canaries) -> subprocess.CompletedProcess[str]:
    argv, env = run_args(job, state, canaries)
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"portshift run did not finish; stderr ends with: {err[-3000:]}") from None


def export(admin: Any, bucket: str) -> tuple[str, dict[str, int]]:
    """The export root (under the prefix) and every object in it with its size."""
    objects = {o["Key"]: o["Size"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])}
    manifests = [k for k in objects if k.endswith("/portshift-manifest.txt")]
    assert len(manifests) == 1, objects
    root = manifests[0].rsplit("/", 1)[0]
    assert root.startswith("exports/acme/")
    return root, objects


def manifest_entries(admin: Any, bucket: str, root: str) -> dict[str, str]:
    text = admin.get_object(Bucket=bucket, Key=f"{root}/portshift-manifest.txt")["Body"].read().decode()
    entries = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            digest, path = line.split("  ", 1)
            entries[path] = digest
    return entries


def test_run_into_s3_then_rehash_every_object(
    tmp_path: Path, moto: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Pending
) -> None:
    r = run(write_job(tmp_path, bucket, moto.url, certs.ca_pem), tmp_path / "state.db", canaries)
    assert r.returncode == 0, r.stderr
    assert "complete — 6 files" in r.stdout
    for c in canaries:
        assert c not in r.stdout + r.stderr

    root, objects = export(admin, bucket)
    entries = manifest_entries(admin, bucket, root)
    assert len([p for p in entries if p.endswith("media.mp3")]) == 3
    # The manifest describes exactly the files under its root.
    assert {f"{root}/{p}" for p in entries} | {f"{root}/portshift-manifest.txt"} == set(objects)
    for path, digest in entries.items():
        body = admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, path
    # What S3 checked is recorded with each file.
    meta = json.loads(admin.get_object(Bucket=bucket, Key=f"{root}/portshift-manifest.json")["Body"].read())
    verified = {f["path"]: f["verified"] for f in meta["files"]}
    assert all(v.startswith("S3 checked SHA-256 of each of 3 parts") for p, v in verified.items() if p.endswith(".mp3"))
    assert all(v.startswith("S3 checked SHA-256 of 1 part") for p, v in verified.items() if p.endswith(".json"))
    assert pending() == []
    # The source's media types became the objects' Content-Type (multipart and single PUT).
    types = {p.rsplit(".", 1)[1]: admin.head_object(Bucket=bucket, Key=f"{root}/{p}")["ContentType"] for p in entries}
    assert types["mp3"] == "audio/mpeg" and types["json"] == "application/json"


def test_a_corrupted_upload_is_never_recorded_as_done(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Pending
) -> None:
    victim = "ex0000000001/media.mp3"
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(flip_body_byte=99, drop_headers=("x-amz-checksum-sha256",))
        if victim in req.target and "partNumber=2" in req.target
        else None
    )
    job, state = write_job(tmp_path, bucket, tls_proxy.url, certs.ca_pem, count=2, retries=1), tmp_path / "state.db"
    r = run(job, state, canaries)
    assert r.returncode == ExitCode.PARTIAL, (r.returncode, r.stdout, r.stderr)
    assert "upload part 2" in r.stderr and "S3 confirmed SHA-256" in r.stderr
    tries = [q for q in tls_proxy.seen if victim in q.target and "partNumber=2" in q.target]
    assert len(tries) == 2  # the first attempt and one retry, both damaged in flight

    objects = {o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not [k for k in objects if k.endswith(victim)], "the damaged object must not exist"
    assert not [k for k in objects if k.endswith("portshift-manifest.txt")], "a partial job writes no manifest"
    assert pending() == []
    jobs = subprocess.run(
        [sys.executable, "-m", "portshift", "jobs", "--state", str(state), "--json"], capture_output=True, text=True, check=True
    )
    (row,) = json.loads(jobs.stdout)
    assert row["status"] == "partial" and row["file_count"] == len(objects)  # the damaged file is not done
    show = subprocess.run(
        [sys.executable, "-m", "portshift", "jobs", "show", row["id"], "--state", str(state), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    print(show.stdout)

    # Without the damage, a re-run resumes, uploads only what is missing, and completes.
    tls_proxy.rule = lambda req: None
    tls_proxy.seen.clear()
    again = run(job, state, canaries)
    assert again.returncode == 0, again.stderr
    assert {q.target.split("?")[0].rsplit("/", 2)[-2] for q in tls_proxy.seen if "media.mp3" in q.target} == {"ex0000000001"}
    root, objects_now = export(admin, bucket)
    entries = manifest_entries(admin, bucket, root)
    assert len([p for p in entries if p.endswith("media.mp3")]) == 2
    for path, digest in entries.items():
        assert hashlib.sha256(admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()).hexdigest() == digest
    assert pending() == []


@pytest.mark.parametrize("region", ["eu-west-1"])
def test_a_region_outside_allowed_regions_stops_before_anything_is_sent(
    tmp_path: Path, tls_proxy: Any, certs: Any, bucket: str, canaries: Canaries, region: str
) -> None:
    job = write_job(tmp_path, bucket, tls_proxy.url, certs.ca_pem)
    job.write_text(job.read_text().replace('region = "us-east-1"', f'region = "{region}"'))
    r = run(job, tmp_path / "state.db", canaries)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "allowed_regions" in r.stderr
    assert tls_proxy.connections == 0


def test_verify_store_reads_the_export_back_from_s3(
    tmp_path: Path, moto: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries
) -> None:
    assert run(write_job(tmp_path, bucket, moto.url, certs.ca_pem, count=2), tmp_path / "s.db", canaries).returncode == 0
    root, _ = export(admin, bucket)
    job_id = root.rsplit("/", 1)[1]
    store = tmp_path / "store.toml"
    store.write_text(
        f'[store]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "exports/acme"\nregion = "us-east-1"\n'
        f'endpoint_url = "{moto.url}"\nca_bundle = "{certs.ca_pem}"\naddressing_style = "path"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PORTSHIFT_"))}
    env.update(PORTSHIFT_AWS_ACCESS_KEY_ID="AKIAREADONLY", PORTSHIFT_AWS_SECRET_ACCESS_KEY="CANARYreadonly")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "portshift", "verify", job_id, "--store", str(store), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    ok = verify()
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] == 5  # 4 files + the JSON manifest

    media = next(p for p in manifest_entries(admin, bucket, root) if p.endswith("media.mp3"))
    admin.put_object(Bucket=bucket, Key=f"{root}/{media}", Body=b"replaced")
    admin.put_object(Bucket=bucket, Key=f"{root}/stray.txt", Body=b"not exported by portshift")
    bad = verify()
    assert bad.returncode == ExitCode.VERIFY_FAILED
    report = json.loads(bad.stdout)
    assert report["differ"] == [media] and report["extra"] == ["stray.txt"]
    assert "CANARYreadonly" not in bad.stdout + bad.stderr


# --- issue 9: SIGKILL in the middle of a multipart upload, then a re-run -------------------------


def kill_points(seed: int = 20261130) -> list[tuple[int, str]]:
    """Three seeded (recording, request) pairs: SIGKILL when that request of that recording's
    media upload reaches the server. One while part 1 is in flight (the upload holds no part
    yet), one while a later part is (parts stored), one while CompleteMultipartUpload is."""
    rng = random.Random(seed)
    return [
        (rng.randrange(2), "partNumber=1"),
        (rng.randrange(2), f"partNumber={rng.choice((2, 3))}"),
        (rng.randrange(2), "complete"),
    ]


@pytest.mark.parametrize(("rec", "what"), kill_points(), ids=lambda v: str(v))
def test_a_run_killed_mid_multipart_upload_leaves_no_pending_upload_after_the_rerun(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Pending, rec: int, what: str
) -> None:
    victim = f"ex0000{rec:06d}/media.mp3"
    proc: list[subprocess.Popen[bytes]] = []
    started, killed = threading.Event(), threading.Event()

    def rule(req: Any) -> Any:
        if killed.is_set() or victim not in req.target.split("?")[0]:
            return None
        hit = (
            "uploadId=" in req.target and "partNumber=" not in req.target and req.method == "POST"
            if what == "complete"
            else f"?{what}&" in req.target or f"&{what}&" in req.target or req.target.endswith(what)
        )
        if not hit:
            return None
        started.wait(10)
        os.kill(proc[0].pid, signal.SIGKILL)  # no cleanup at all: the upload stays open on the server
        killed.set()
        return tls_proxy.Action(close=True)

    tls_proxy.rule = rule
    # transfers = 1: at the moment of the kill exactly one upload is open, and it is journaled
    # (the instant between CreateMultipartUpload's answer and the journal write is not tested).
    job = write_job(tmp_path, bucket, tls_proxy.url, certs.ca_pem, count=2)
    job.write_text(job.read_text().replace("transfers = 2", "transfers = 1"))
    state = tmp_path / "state.db"
    argv, env = run_args(job, state, canaries)
    proc.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    started.set()
    _, err = proc[0].communicate(timeout=90)
    assert proc[0].returncode == -signal.SIGKILL, err.decode()[-2000:]

    # The crash left an upload open on the server, and the state DB journaled exactly it.
    left = {u["UploadId"]: u["Key"] for u in pending()}
    assert len(left) == 1 and next(iter(left.values())).endswith(victim), left
    with sqlite3.connect(state) as db:
        journaled = [json.loads(d) for (d,) in db.execute("select data from sink_journal")]
    assert [(j["upload_id"], j["key"]) for j in journaled] == list(left.items())
    assert journaled[0]["bucket"] == bucket and set(journaled[0]) == {"bucket", "key", "upload_id"}
    for path in (p for p in tmp_path.glob("state.db*") if p.is_file()):  # the DB and its WAL: no credential
        raw = path.read_bytes()
        assert not any(c.encode() in raw for c in canaries), path.name

    tls_proxy.rule = lambda req: None
    tls_proxy.seen.clear()
    again = run(job, state, canaries)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cleaning up 1 operations" in again.stderr
    # (check() aborts an upload id that does not exist, "check-...": it creates nothing to clean up)
    aborts = [q for q in tls_proxy.seen if q.method == "DELETE" and "uploadId=check-" not in q.target]
    assert len(aborts) == 1 and f"uploadId={next(iter(left))}" in aborts[0].target
    assert pending() == []
    with sqlite3.connect(state) as db:
        assert db.execute("select count(*) from sink_journal").fetchone() == (0,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # Every object the manifest lists, downloaded and re-hashed; nothing else under the root.
    root, objects = export(admin, bucket)
    entries = manifest_entries(admin, bucket, root)
    assert sorted(p.rsplit("/", 1)[-1] for p in entries) == ["media.mp3"] * 2 + ["metadata.json"] * 2 + [
        "portshift-manifest.json"
    ]
    assert {f"{root}/{p}" for p in entries} | {f"{root}/portshift-manifest.txt"} == set(objects)
    for path, digest in entries.items():
        body = admin.get_object(Bucket=bucket, Key=f"{root}/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, path
