"""Crash and resume into S3 (issue 9): `portshift run` is SIGKILLed at seeded points of an export
of 200 calls into the moto server over HTTPS, and re-run until it finishes.

The run is a real subprocess; a test-only plugin (``fault_plugin/portshift_s3_faults.py``, loaded
as a fake distribution from PYTHONPATH) wraps the example source and the real ``S3Sink`` and kills
its own process at the point named by ``PORTSHIFT_TEST_KILL`` (counted within that process). A
few media files are above the part size (5 MiB, the minimum), so both PutObject and multipart
uploads are killed mid-request.

Two shapes, one set of checks:

- ``test_a_chain_of_kills_...`` (``make test``): ONE job, killed in turn at every point of a
  seeded chain (each re-run continues the same job and dies at the next point), then run to the
  end. After every kill: the exit was SIGKILL, no final manifest is visible, the state DB passes
  ``PRAGMA integrity_check``, the job is not complete, and every multipart upload pending on the
  server is one the sink journal knows (so the next run can abort it; the next run does).
- ``test_killed_s3_run_resumes_...`` (``make soak`` only, ``PORTSHIFT_SOAK=1``): independent
  points, each a fresh export killed once and re-run.

After the last, clean run, read back from S3 with a plain client (:func:`check_export`):
- the manifest lists every expected file exactly once, and its hashes are the source's own;
- every listed object, downloaded again, has the SHA-256 the manifest says;
- there is one export root and no object under it that the manifest does not list;
- no multipart upload is pending in the bucket;
- the state DB passes ``PRAGMA integrity_check``, its job is ``complete``, its sink journal empty.

``PORTSHIFT_SOAK=1`` also runs the chain on 1,000 calls with five rounds of kill points.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from portshift.default_plugins.example_source import synthetic_sha256

from .conftest import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, Certs, Moto, pending_uploads

SOAK = os.environ.get("PORTSHIFT_SOAK", "") not in ("", "0")
#: calls per export of the independent points (soak); PORTSHIFT_S3_CRASH_CALLS overrides it
CALLS = int(os.environ.get("PORTSHIFT_S3_CRASH_CALLS", 200))
MORE = 2  # extra independent kill points per phase in the soak
#: the chain: the issue's 200 calls and one round of points in make test; more of both in the soak
CHAIN_CALLS = 1000 if SOAK else 200
CHAIN_ROUNDS = 5 if SOAK else 1
MEDIA = 3000
CHUNK = 1024
LARGE_EVERY = 50  # recordings 25, 75, 125, 175 (...) have large media
LARGE_SIZE = 5 * 1024 * 1024 + 64 * 1024  # a multipart upload of two parts (part_size = 5 MiB)
PREFIX = "crash"
HERE = Path(__file__).parent
PLUGIN = HERE / "fault_plugin" / "portshift_s3_faults.py"
RUNNER = HERE / "fault_plugin" / "forking_runner.py"
CANARIES = (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
#: phases whose kill lands while a multipart upload is open on the server
MID_MULTIPART = ("part", "complete", "created")
TXT, JSON_INDEX = "portshift-manifest.txt", "portshift-manifest.json"


# --- kill points ---------------------------------------------------------------------------------


def kill_points(calls: int = CALLS, more: int = MORE, seed: int = 20261201) -> list[str]:
    """Independent points (each on a fresh export) over every phase; see the plugin's docstring."""
    rng = random.Random(seed)
    files, large = 2 * calls, max(1, calls // LARGE_EVERY)

    def some(phase: str, count: int, top: int) -> list[str]:
        return [f"{phase}:{rng.randint(1, top)}" for _ in range(count + more)]

    points = [
        "list:1",
        *some("list", 1, calls),
        *some("download", 3, files),
        *some("upload", 4, files),  # mid-PutObject (or mid-UploadPart when the n-th object is large)
        f"part:{rng.randint(1, large)}:1",
        f"part:{rng.randint(1, large)}:2",  # mid-multipart
        *some("complete", 1, large),  # every part stored, CompleteMultipartUpload half sent
        *some("created", 1, large),  # CreateMultipartUpload answered, the upload id not journaled
        *some("completed", 1, large),  # CompleteMultipartUpload answered, the sink's journal not told
        *some("committed", 3, files),
        *some("committed-mp", 1, large),  # stored, the state not told
        *some("recorded", 3, files),
        "manifest:1",
        "manifest:2",  # mid-PutObject of the JSON index / of portshift-manifest.txt
    ]
    return list(dict.fromkeys(points))  # a point drawn twice runs once


def chain_points(rounds: int = CHAIN_ROUNDS, seed: int = 20261202) -> list[str]:
    """The chain: points relative to the run they kill (counters are per process).

    Every round kills in every phase of a transfer, the multipart ones on the first multipart
    upload of the run. A round moves the job on by at most ~140 recordings (the small-file kills
    count up to 15 each, plus the transfers in flight), so a large file (one in 50 recordings) is
    still pending for every multipart kill: 200 calls hold 4, 1,000 hold 20 for 5 rounds. The
    manifest kills come last: the manifest is written only when every file is done, so the first
    of them also finishes the export.
    """
    rng = random.Random(seed)

    def few(phase: str) -> list[str]:
        return [f"{phase}:{rng.randint(1, 15)}" for _ in range(3)]

    points = ["list:1", f"list:{rng.randint(10, 30)}"]  # before any transfer; mid-listing
    for _ in range(rounds):
        points += [*few("download"), *few("upload")]
        points += ["created:1", "part:1:1", "part:1:2", "complete:1", "completed:1", "committed-mp:1"]
        points += [*few("committed"), *few("recorded")]
    return [*points, "manifest:1", "manifest:2"]


POINTS = kill_points()
CHAIN = chain_points()


# --- the export: job file, runs, what the source generates ----------------------------------------


@pytest.fixture(scope="module")
def fault_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / PLUGIN.name).write_text(PLUGIN.read_text())
    info = site / "portshift_s3_faults-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-s3-faults\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\ns3-faults = portshift_s3_faults\n")
    return site


def tail(path: str) -> str:
    """``<id>/<artifact>.<ext>`` of a manifest path (the date folders above it are the template's)."""
    return "/".join(path.split("/")[-2:])


@cache
def source_truth(calls: int) -> dict[str, str]:
    """path tail -> SHA-256 of every file as the example source generates it (media and metadata)."""
    out = {}
    first = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
    for i in range(calls):
        rid = f"ex0000{i:06d}"
        size = LARGE_SIZE if i % LARGE_EVERY == LARGE_EVERY // 2 else MEDIA
        out[f"{rid}/media.mp3"] = synthetic_sha256(size, f"0:{rid}", CHUNK)
        meta = {"id": rid, "started_at": (first + timedelta(minutes=30 * i)).isoformat(), "title": f"Example call {rid}"}
        out[f"{rid}/metadata.json"] = hashlib.sha256(json.dumps(meta, indent=2).encode()).hexdigest()
    return out


def expected_tails(calls: int) -> Counter[str]:
    ids = [f"ex0000{i:06d}" for i in range(calls)]
    return Counter([f"{i}/media.mp3" for i in ids] + [f"{i}/metadata.json" for i in ids] + [JSON_INDEX])


def run_env(site: Path) -> dict[str, str]:
    """The environment of every run: the fault plugin on PYTHONPATH, test credentials, and none
    of the machine's AWS_* or PORTSHIFT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PORTSHIFT_"))}
    env.update(
        PYTHONPATH=str(site),
        PORTSHIFT_LOAD_PLUGINS="portshift-s3-faults",
        PORTSHIFT_AWS_ACCESS_KEY_ID=ACCESS_KEY,
        PORTSHIFT_AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        PORTSHIFT_AWS_SESSION_TOKEN=SESSION_TOKEN,
    )
    return env


class ForkingRunner:
    """``fault_plugin/forking_runner.py``: each killed run is a fork of one process that already
    imported portshift and boto3, calling ``portshift.cli.main`` (what ``python -m portshift``
    calls) in its own process, which the fault plugin SIGKILLs. Saves the interpreter start and
    imports (~0.6 s of CPU) per killed run; the runs that finish use ``python -m portshift``."""

    def __init__(self, site: Path, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=run_env(site),
        )

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out, err = self.scratch / "run.out", self.scratch / "run.err"
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "out": str(out), "err": str(err)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the forking runner ended (exit {self.proc.poll()})"
        return subprocess.CompletedProcess(argv, int(line), out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def runner(fault_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkingRunner]:
    r = ForkingRunner(fault_site, tmp_path_factory.mktemp("runs"))
    yield r
    r.close()


@dataclass
class Export:
    """One job (job file + state DB) into one fresh bucket."""

    calls: int
    bucket: str
    job: Path
    state: Path
    site: Path
    runner: ForkingRunner

    def argv(self) -> list[str]:
        return ["run", "--config", str(self.job), "--state", str(self.state), "--no-progress"]

    def killed(self, kill: str) -> subprocess.CompletedProcess[str]:
        """A run that must die at ``kill`` (forked from the runner)."""
        done = self.runner.run(self.argv(), {"PORTSHIFT_TEST_KILL": kill})
        self._no_secrets(done, kill)
        assert done.returncode == -signal.SIGKILL, f"{kill}: no SIGKILL, exit {done.returncode}: {done.stderr[-2000:]}"
        return done

    def finished(self) -> subprocess.CompletedProcess[str]:
        """A run that must finish: ``python -m portshift run`` as a plain subprocess."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "portshift", *self.argv()],
                env=run_env(self.site),
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise AssertionError(f"portshift run did not finish; stderr ends with: {err[-3000:]}") from None
        self._no_secrets(done, "the final run")
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    @staticmethod
    def _no_secrets(done: subprocess.CompletedProcess[str], what: str) -> None:
        for c in CANARIES:
            assert c not in done.stderr + done.stdout, f"a credential in the output of the run ({what})"


@pytest.fixture
def new_export(tmp_path: Path, fault_site: Path, runner: ForkingRunner, moto: Moto, certs: Certs, admin: Any) -> Iterator[Any]:
    """``new_export(calls)``: a job into a fresh bucket (emptied and deleted afterwards: moto
    keeps everything in memory)."""
    buckets: list[str] = []

    def make(calls: int) -> Export:
        name = f"crash-{uuid.uuid4().hex[:16]}"
        admin.create_bucket(Bucket=name)
        buckets.append(name)
        job = tmp_path / f"{name}.toml"
        job.write_text(
            f'[job]\ntransfers = 4\n\n[source]\ntype = "faulty-example"\ncount = {calls}\nmedia_size = {MEDIA}\n'
            f"chunk_size = {CHUNK}\nevery_minutes = 30\nlarge_every = {LARGE_EVERY}\nlarge_size = {LARGE_SIZE}\n\n"
            f'[sink]\ntype = "faulty-s3"\nbucket = "{name}"\nprefix = "{PREFIX}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{moto.url}"\nca_bundle = "{certs.ca_pem}"\naddressing_style = "path"\n'
            'part_size = "5MiB"\n'
        )
        return Export(calls, name, job, tmp_path / f"{name}.db", fault_site, runner)

    yield make
    for name in buckets:
        for upload in pending_uploads(admin, name):
            admin.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        keys = list(list_objects(admin, name))
        for i in range(0, len(keys), 1000):
            admin.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})
        admin.delete_bucket(Bucket=name)


def list_objects(admin: Any, bucket: str) -> dict[str, int]:
    return {
        o["Key"]: o["Size"]
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    }


class Reader:
    """GETs objects from moto with SigV4-signed requests on one kept-alive connection per thread.

    The same bytes boto3's ``get_object`` returns, at a fraction of its client-side CPU (this
    suite downloads thousands of objects on a 2-core machine)."""

    def __init__(self, moto: Moto, certs: Certs) -> None:
        self.base = moto.url
        self.port = moto.port
        self.context = ssl.create_default_context(cafile=str(certs.ca_pem))
        self.signer = S3SigV4Auth(Credentials("test", "test"), "s3", "us-east-1")
        self.local = threading.local()

    def get(self, bucket: str, key: str) -> bytes:
        path = f"/{bucket}/{quote(key, safe='/~')}"
        request = AWSRequest("GET", self.base + path)
        self.signer.add_auth(request)
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context)
            try:
                conn.request("GET", path, headers=dict(request.headers.items()))
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            assert response.status == 200, f"GET {key}: {response.status} {body[:300]!r}"
            return body
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def reader(moto: Moto, certs: Certs) -> Reader:
    return Reader(moto, certs)


# --- the checks (shared by both shapes) -------------------------------------------------------------


def read_state(state: Path) -> tuple[str, list[str], list[dict[str, str]]]:
    """(integrity_check, job statuses, sink journal entries), read-only: nothing is recovered or
    checkpointed on the next run's behalf."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
        jobs = [s for (s,) in db.execute("select status from jobs")]
        journal = [json.loads(d) for (d,) in db.execute("select data from sink_journal")]
    finally:
        db.close()
    return integrity, jobs, journal


@dataclass
class AfterKill:
    uploads: set[str]  #: ids of the multipart uploads pending on the server
    intent_only: set[str]  #: of those, the ones the journal knows only by bucket and key


def check_after_kill(admin: Any, export: Export, kill: str) -> AfterKill:
    """What must hold right after a SIGKILL, before the next run: no final manifest (a manifest
    PutObject killed mid-body leaves nothing: S3 stores an object whole or not at all; the JSON
    index is visible only when the kill hit the text manifest after it), the state DB intact and
    its job not complete, every pending multipart upload known to the sink journal."""
    keys = list_objects(admin, export.bucket)
    assert not [k for k in keys if k.endswith(f"/{TXT}")], f"{kill}: a run killed before its end left a manifest"
    index = [k for k in keys if k.endswith(f"/{JSON_INDEX}")]
    assert bool(index) == (kill == "manifest:2"), f"{kill}: JSON index objects: {index}"

    integrity, jobs, journal = read_state(export.state)
    assert integrity == "ok", f"{kill}: PRAGMA integrity_check: {integrity}"
    assert len(jobs) == 1 and jobs[0] != "complete", f"{kill}: job status {jobs}"

    ids = {e["upload_id"] for e in journal if e.get("upload_id")}
    intents = {e["key"] for e in journal if not e.get("upload_id") and e.get("bucket") == export.bucket}
    uploads = pending_uploads(admin, export.bucket)
    unknown = [(u["Key"], u["UploadId"]) for u in uploads if u["UploadId"] not in ids and u["Key"] not in intents]
    assert not unknown, f"{kill}: multipart uploads pending that the sink journal does not know: {unknown}"
    phase = kill.split(":")[0]
    if phase in MID_MULTIPART:
        assert uploads, f"{kill}: the kill did not land while a multipart upload was open"
    intent_only = {u["UploadId"] for u in uploads if u["UploadId"] not in ids}
    if phase == "created":
        # The window the fix is for: S3 created the upload, the journal has only the intent.
        assert intent_only, f"{kill}: no upload known to the journal by its key alone: {journal}"
    return AfterKill({u["UploadId"] for u in uploads}, intent_only)


class OrphanedUpload(AssertionError):
    """A multipart upload is still pending after the final run."""


def check_export(admin: Any, reader: Reader, export: Export) -> int:
    """Every check of the issue on what a finished run left; returns the number of objects hashed."""
    bucket = export.bucket
    objects = list_objects(admin, bucket)
    manifests = [k for k in objects if k.endswith(f"/{TXT}")]
    assert len(manifests) == 1, f"one manifest expected, found {manifests}"
    root = manifests[0].rsplit("/", 1)[0]
    assert root.startswith(f"{PREFIX}/") and root.count("/") == 1, root
    outside = [k for k in objects if not k.startswith(f"{root}/")]
    assert not outside, f"one export root expected; objects outside {root}: {outside[:5]}"

    text = admin.get_object(Bucket=bucket, Key=manifests[0])["Body"].read().decode()
    entries = [ln.split("  ", 1) for ln in text.splitlines() if ln and not ln.startswith("#")]
    listed = Counter(path for _, path in entries)
    twice = [p for p, n in listed.items() if n > 1]
    assert not twice, f"listed more than once: {twice[:5]}"
    want, got = expected_tails(export.calls), Counter(tail(p) for p in listed)
    assert got == want, f"missing from the manifest: {list(want - got)[:5]}, unexpected: {list(got - want)[:5]}"
    digests = {path: digest for digest, path in entries}
    truth = source_truth(export.calls)
    wrong = [p for p, d in digests.items() if tail(p) in truth and truth[tail(p)] != d]
    assert not wrong, f"the manifest's SHA-256 is not the source's for {wrong[:5]}"

    leftovers = set(objects) - {f"{root}/{p}" for p in listed} - {manifests[0]}
    assert not leftovers, f"objects under the root that the manifest does not list: {sorted(leftovers)[:5]}"

    def rehash(path: str) -> tuple[str, str]:
        return path, hashlib.sha256(reader.get(bucket, f"{root}/{path}")).hexdigest()

    with ThreadPoolExecutor(6) as pool:
        mismatched = [p for p, d in pool.map(rehash, digests) if d != digests[p]]
    assert not mismatched, f"stored objects whose SHA-256 is not the manifest's: {mismatched[:5]}"

    integrity, jobs, journal = read_state(export.state)
    assert (integrity, jobs, journal) == ("ok", ["complete"], []), (integrity, jobs, journal)
    left = pending_uploads(admin, bucket)
    if left:
        raise OrphanedUpload(f"multipart uploads still pending: {[(u['Key'], u['UploadId']) for u in left]}")
    return len(digests)


# --- the tests -------------------------------------------------------------------------------------


def test_a_chain_of_kills_resumes_one_job_to_a_complete_verifiable_export(new_export: Any, admin: Any, reader: Reader) -> None:
    export: Export = new_export(CHAIN_CALLS)
    t0 = time.monotonic()
    before = AfterKill(set(), set())
    cleaned = 0
    times: list[str] = []
    for kill in CHAIN:
        t = time.monotonic()
        crashed = export.killed(kill)
        times.append(f"{kill} {time.monotonic() - t:.1f}")
        if before.uploads:
            # This run started by cleaning up what the previous kill left: every one of those
            # uploads is gone (aborted from the journal, by id or by listing its key).
            assert "cleaning up" in crashed.stderr, f"{kill}: the run did not clean up after the previous kill"
            still = before.uploads & {u["UploadId"] for u in pending_uploads(admin, export.bucket)}
            assert not still, f"{kill}: uploads the previous kill left are still pending: {still}"
            cleaned += len(before.uploads)
        t = time.monotonic()
        before = check_after_kill(admin, export, kill)
        times[-1] += f"+{time.monotonic() - t:.1f}s"
    resumed = export.finished()
    if before.uploads:
        assert "cleaning up" in resumed.stderr
        cleaned += len(before.uploads)
    t1 = time.monotonic()
    n = check_export(admin, reader, export)
    print(
        f"chain of {len(CHAIN)} kills, {CHAIN_CALLS} calls: runs {t1 - t0:.1f}s, check {time.monotonic() - t1:.1f}s, "
        f"{cleaned} uploads left open by kills and aborted, {n} objects re-hashed\n(run+check: {', '.join(times)})"
    )


@pytest.mark.skipif(not SOAK, reason="soak only (PORTSHIFT_SOAK=1, make soak); make test runs the chain")
@pytest.mark.parametrize("kill", POINTS if SOAK else POINTS[:1])
def test_killed_s3_run_resumes_to_a_complete_verifiable_export(new_export: Any, admin: Any, reader: Reader, kill: str) -> None:
    export: Export = new_export(CALLS)
    t0 = time.monotonic()
    export.killed(kill)
    t1 = time.monotonic()
    after = check_after_kill(admin, export, kill)
    resumed = export.finished()
    t2 = time.monotonic()
    if after.uploads:
        assert "cleaning up" in resumed.stderr, "the re-run did not clean up the uploads the crash left"
    n = check_export(admin, reader, export)
    print(
        f"{kill}: crash run {t1 - t0:.1f}s, re-run {t2 - t1:.1f}s, check {time.monotonic() - t2:.1f}s, "
        f"{len(after.uploads)} uploads left open by the crash ({len(after.intent_only)} known by key only), "
        f"{n} objects re-hashed"
    )


def test_the_kill_points_cover_every_phase() -> None:
    phases = {p.split(":")[0] for p in CHAIN}
    assert (
        phases
        == {p.split(":")[0] for p in POINTS}
        == {
            "list",
            "download",
            "upload",
            "created",
            "part",
            "complete",
            "completed",
            "committed",
            "committed-mp",
            "recorded",
            "manifest",
        }
    )
    assert len(CHAIN) >= 20 and CHAIN[-2:] == ["manifest:1", "manifest:2"]
    assert {"part:1:1", "part:1:2"} <= set(CHAIN)
