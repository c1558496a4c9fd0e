"""A big recording's upload killed at 90 % is continued by the next run, not sent again
(issue 21): the Chorus simulator over HTTPS, moto over TLS behind a proxy that counts what reaches
the store, real `portshift run` processes, SIGKILL, GNU `sha256sum -c`.

``PORTSHIFT_RESUME_MIB`` sets the recording's size (48 MiB in `make test`; 1024 in
`make soak`, the issue's figure; benchmarks/README.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from portshift.testing import PORTSHIFT

from .conftest import Canaries, run_env
from .test_end_to_end import manifest_entries

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

MiB = 1024 * 1024
PART = 5 * MiB
TOKEN = "s3-resume-" + "t" * 24
PLUGINS = "portshift-sink-s3,portshift-source-chorus"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
SIZE = int(os.environ.get("PORTSHIFT_RESUME_MIB", "48")) * MiB


def _spec(size: int) -> Any:
    return chorus.TenantSpec(
        calls=1, seed=21, start=NOW - timedelta(days=3), end=NOW - timedelta(days=1), media_size=size,
        unprocessed_ratio=0.0, no_show_ratio=0.0, zero_duration_ratio=0.0, private_ratio=0.0, other_type_ratio=0.0,
    )  # fmt: skip


def _job(tmp_path: Path, sim: Any, bucket: str, endpoint: str, ca: Path) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 1\nsince = "{(NOW - timedelta(days=4)).date()}"\nuntil = "{NOW.date()}"\n\n'
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\nrequests_per_second = 0\n\n'
        f'[sink]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "exports/acme"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\nca_bundle = "{ca}"\naddressing_style = "path"\npart_size = "5MiB"\n'
    )
    return job


def _commands(
    tmp_path: Path, sim: Any, bucket: str, proxy: Any, ca: Path, canaries: Canaries, verb: str = "run"
) -> tuple[list[str], dict[str, str], Path]:
    """The `portshift run` (or `worker`) command of the test's job, its environment and state."""
    job = _job(tmp_path, sim, bucket, proxy.url, ca)
    env = run_env(canaries)
    env.update({"PORTSHIFT_CHORUS_TOKEN": TOKEN, "PORTSHIFT_RESUME_ABOVE": "16MiB", "PORTSHIFT_LOAD_PLUGINS": PLUGINS})
    state = tmp_path / "s.db"
    return [*PORTSHIFT, verb, "--config", str(job), "--state", str(state), "--no-progress", "--log-level", "info"], env, state


def _journaled_offset(state: Path) -> int:
    """The offset of the resume point journaled for the media upload (0: none yet)."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("select data from sink_journal").fetchall()
    except sqlite3.OperationalError:
        return 0
    best = 0
    for (data,) in rows:
        point = json.loads(data).get("resume")
        if point:
            best = max(best, int(json.loads(point)["offset"]))
    return best


def _journal_holds_no_content_and_no_secret(state: Path, sim: Any, canaries: Canaries) -> None:
    """What a killed run left in the state: ids, checksums, a SHA-256 state; nothing else."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        ((data,),) = db.execute("select data from sink_journal").fetchall()
    entry = json.loads(data)
    assert set(entry) == {"bucket", "key", "upload_id", "piece_size", "pieces", "resume"}
    point = json.loads(entry["resume"])
    assert set(point) == {"v", "offset", "sha256_state", "size", "validator", "recording", "artifact", "ext"}
    assert point["sha256_state"].startswith("sha256-v1:") and len(point["sha256_state"]) == len("sha256-v1:") + 80
    (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
    head = b"".join(sim.tenant.media_chunks(cid, 0, 4096))
    raw = b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*") if p.is_file())  # the file, its WAL and shm
    for i in range(0, 4096, 64):  # no 64-byte block of the media, as bytes, hex or base64
        block = head[i : i + 64]
        assert block not in raw and block.hex().encode() not in raw and base64.b64encode(block) not in raw
    for canary in (*canaries, TOKEN):  # the S3 credentials, the Chorus token
        assert canary.encode() not in raw


def _upload_bytes(proxy: Any, since: int) -> int:
    """Bytes of part and object bodies the store received after the ``since``-th request."""
    return sum(r.body_len for r in proxy.seen[since:] if r.method == "PUT")


def _kill_at(
    argv: list[str], env: dict[str, str], state: Path, proxy: Any, fraction: float, sig: int = 9, size: int = SIZE
) -> int:
    """Start `portshift run` and SIGKILL it once the journal says ``fraction`` of the media is
    stored: the parts after that point are held at the proxy until then, so the kill lands there.
    A sealed journal cannot be read here: then the kill comes 2 s after the first held part
    arrived (the parts before it have ended by then), and 0 is returned."""
    import threading

    held = -(-int(fraction * size) // PART) + 1  # the first part number past the fraction
    killed, reached = threading.Event(), threading.Event()

    def rule(req: Any) -> Any:
        number = req.target.partition("partNumber=")[2].partition("&")[0]
        if req.method == "PUT" and number.isdigit() and int(number) >= held:
            reached.set()
            killed.wait(120)
            return proxy.Action(close=True)
        return None

    proxy.rule = rule
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    sealed = "[state]" in Path(argv[argv.index("--config") + 1]).read_text()
    stored = 0
    try:
        while not (reached.wait(2.0) if sealed else (stored := _journaled_offset(state)) >= fraction * size):
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the upload never reached the kill point"
            time.sleep(0.02)
        if sealed:
            time.sleep(2.0)
    finally:
        proc.send_signal(sig)
        killed.set()  # the parts held at the proxy are dropped now
        proc.wait(60)
        proxy.rule = lambda req: None
    assert proc.returncode == (-9 if sig == 9 else 130), proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    return 0 if sealed else max(stored, _journaled_offset(state))  # parts in flight may have ended after a SIGTERM


def _run(argv: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*argv, "--report", "json"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 or not check, r.stderr[-3000:]
    return r


def _verify_export(admin: Any, bucket: str, tmp_path: Path, media_sha256: str) -> None:
    """Every file with GNU `sha256sum -c`, and the media object's SHA-256 as S3 itself reports it."""
    objects = {o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])}
    (manifest,) = [k for k in objects if k.endswith("/portshift-manifest.txt")]
    root = manifest.rsplit("/", 1)[0]
    entries = manifest_entries(admin, bucket, root)
    local = tmp_path / "downloaded"
    for path in [*entries, "portshift-manifest.txt"]:
        target = local / path
        target.parent.mkdir(parents=True, exist_ok=True)
        admin.download_file(bucket, f"{root}/{path}", str(target))
    check = subprocess.run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], cwd=local, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (media,) = [p for p in entries if "/media." in p]
    assert entries[media] == media_sha256
    # S3's own checksums: the composite of the part SHA-256s it verified equals the composite of
    # the downloaded bytes cut into the same parts
    head = admin.head_object(Bucket=bucket, Key=f"{root}/{media}", ChecksumMode="ENABLED")
    body = (local / media).read_bytes()
    digests = b"".join(hashlib.sha256(body[i : i + PART]).digest() for i in range(0, len(body), PART))
    parts = -(-len(body) // PART)
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(hashlib.sha256(digests).digest()).decode()
    assert head.get("PartsCount", parts) == parts


@pytest.mark.parametrize("mode", ["resume", "off"])
def test_a_big_upload_killed_at_90_percent_is_continued_by_the_next_run(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any, mode: str
) -> None:
    """``off``: the same second run with ``PORTSHIFT_RESUME_ABOVE=off``, what every run did before
    (the upload aborted, the whole recording sent again): the baseline of the figures."""
    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        stored = _kill_at(argv, env, state, tls_proxy, 0.9)
        assert len(pending()) == 1  # the upload is left open, as a crash leaves it
        _journal_holds_no_content_and_no_secret(state, sim, canaries)
        served_before, seen_before = sim.stats.media_bytes, len(tls_proxy.seen)
        r = _run(argv, {**env, "PORTSHIFT_RESUME_ABOVE": "16MiB" if mode == "resume" else "off"})
        media_again = sim.stats.media_bytes - served_before
        store_again = _upload_bytes(tls_proxy, seen_before)
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    print(f"\n[{mode}] killed at {stored / SIZE:.1%} of {SIZE // MiB} MiB; sent again: source {media_again} B "
          f"({media_again / SIZE:.1%}), store {store_again} B ({store_again / SIZE:.1%})")  # fmt: skip
    if mode == "resume":
        assert f"continued the upload a stopped worker left at byte {stored} of {SIZE} bytes" in r.stderr, r.stderr[-3000:]
        assert "sending it again from byte 0" not in r.stderr
        # what the issue asks: at most 15 % of the bytes again, at the source and at the store
        assert media_again == SIZE - stored
        assert store_again <= 0.15 * SIZE, store_again
    else:
        assert "continued the upload" not in r.stderr
        assert media_again == SIZE and store_again >= SIZE
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)
    with sqlite3.connect(state) as db:
        assert db.execute("select count(*) from sink_journal").fetchone() == (0,)


def test_an_upload_stopped_by_sigterm_is_kept_and_continued(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """A stop request (SIGTERM: a node drained, a Job's deadline) with parts stored keeps the
    upload open instead of aborting it: the next run sends only the rest."""
    import signal

    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        stored = _kill_at(argv, env, state, tls_proxy, 0.5, sig=signal.SIGTERM)
        assert len(pending()) == 1
        served_before = sim.stats.media_bytes
        r = _run(argv, env)
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert f"continued the upload a stopped worker left at byte {stored} of {SIZE} bytes" in r.stderr, r.stderr[-3000:]
    assert media_again == SIZE - stored
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)


def test_an_upload_that_cannot_be_continued_is_sent_again_and_said_once(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """The store lost the upload between the runs (a lifecycle rule aborted it): one line says
    so, the recording is sent again from byte 0, the export is whole."""
    size = 24 * MiB
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        _kill_at(argv, env, state, tls_proxy, 0.5, size=size)
        (upload,) = pending()
        admin.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        served_before = sim.stats.media_bytes
        r = _run(argv, env)
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert r.stderr.count("cannot be continued") == 1, r.stderr[-3000:]
    assert "S3 no longer has the upload" in r.stderr and "sending it again from byte 0" in r.stderr
    assert media_again == size
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)


def _change_call(tenant: Any, cid: str, **changes: Any) -> None:
    """Change a call of the running simulator's tenant (its calls are frozen dataclasses)."""
    import dataclasses

    new = dataclasses.replace(tenant.by_id[cid], **changes)
    tenant.by_id[cid] = new
    tenant.calls[:] = [new if c.engagement_id == cid else c for c in tenant.calls]


@pytest.mark.parametrize("change", ["media changed", "no longer listed"])
def test_an_upload_left_for_a_recording_that_changed_or_went_away_is_not_continued(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any, change: str
) -> None:
    """Changed at the source (another size and ETag): refused at the Range request, said once,
    sent again whole. Gone from the listing: nobody continues it, so the upload is aborted when the
    job's transfers end. Either way no upload is left open."""
    size = 24 * MiB
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        _kill_at(argv, env, state, tls_proxy, 0.5, size=size)
        assert len(pending()) == 1
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        if change == "media changed":
            _change_call(sim.tenant, cid, media_size=size + MiB)
        else:
            _change_call(sim.tenant, cid, private=True)
        r = _run(argv, env, check=change == "media changed")
        media_sha256 = sim.tenant.media_sha256(cid)
    assert pending() == []
    with sqlite3.connect(state) as db:
        assert db.execute("select count(*) from sink_journal").fetchone() == (0,)
    if change == "media changed":
        assert r.stderr.count("cannot be continued") == 1, r.stderr[-3000:]
        assert "its size at the source is now" in r.stderr or "changed" in r.stderr
        _verify_export(admin, bucket, tmp_path, media_sha256)
    else:
        # the recording fails as vanished (the listing of the first run had it), and the upload
        # it left is aborted at the end of the transfers
        assert json.loads(r.stdout)["status"] == "partial" and "no longer listed" in r.stderr
        assert "cannot be continued" not in r.stderr
        assert "cleaning up 1 operations a stopped worker of this job left unfinished" in r.stderr, r.stderr[-3000:]


def test_another_worker_of_the_job_continues_the_upload_a_killed_worker_left(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """Two `portshift worker` processes share the job: A takes the recording and is SIGKILLed at
    90 %; B, still running, finds A dead, takes the recording and its upload over, and sends only
    the rest — in the same run, not the next."""
    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries, "worker")
        served_at_kill: list[int] = []
        b: list[subprocess.Popen[str]] = []

        def start_b() -> None:  # once A holds the recording: B has nothing to claim and waits
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
                        if db.execute("select count(*) from recordings where claimed_by is not null").fetchone()[0]:
                            break
                except sqlite3.OperationalError:
                    pass
                time.sleep(0.02)
            b.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

        import threading

        starter = threading.Thread(target=start_b)
        starter.start()
        try:
            stored = _kill_at(argv, env, state, tls_proxy, 0.9)
            served_at_kill.append(sim.stats.media_bytes)
        finally:
            starter.join()
        _, err = b[0].communicate(timeout=600)
        assert b[0].returncode == 0, err[-3000:]
        media_again = sim.stats.media_bytes - served_at_kill[0]
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert f"continued the upload a stopped worker left at byte {stored} of {SIZE} bytes" in err, err[-3000:]
    assert media_again == SIZE - stored
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)


def test_a_sealed_job_continues_its_upload_through_the_sealed_journal(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """With the customer's key ([state] key, docs/byok.md) the journal row is sealed like the
    rest: the entry is found and taken over through its keyed hash, and the upload continued."""
    key_file = tmp_path / "state.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        job = Path(argv[argv.index("--config") + 1])
        job.write_text(job.read_text() + f'\n[state]\nkey = "file:{key_file}"\n')
        _kill_at(argv, env, state, tls_proxy, 0.9)
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            ((data,),) = db.execute("select data from sink_journal").fetchall()
        assert "upload_id" not in data and "sha256_state" not in data  # sealed, not a JSON in clear
        served_before = sim.stats.media_bytes
        r = _run(argv, env)
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    import re

    m = re.search(rf"continued the upload a stopped worker left at byte (\d+) of {SIZE} bytes", r.stderr)
    assert m, r.stderr[-3000:]
    stored = int(m.group(1))
    assert stored >= 0.8 * SIZE and media_again == SIZE - stored
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)


def test_a_continuation_that_fails_on_the_way_is_tried_again_not_dropped(
    tmp_path: Path, tls_proxy: Any, certs: Any, admin: Any, bucket: str, canaries: Canaries, pending: Any
) -> None:
    """S3 answers the first ListParts with a 503: the artifact's retry continues the upload (the
    journal entry, now this worker's, is taken again), instead of leaving it open and starting over."""
    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        argv, env, state = _commands(tmp_path, sim, bucket, tls_proxy, certs.ca_pem, canaries)
        stored = _kill_at(argv, env, state, tls_proxy, 0.9)
        failed: list[str] = []

        def rule(req: Any) -> Any:
            if req.method == "GET" and "uploadId=" in req.target and not failed:
                failed.append(req.target)
                return tls_proxy.Action(respond=tls_proxy.error_response(503, "Slow Down", "SlowDown"))
            return None

        tls_proxy.rule = rule
        served_before = sim.stats.media_bytes
        r = _run(argv, {**env, "PORTSHIFT_RETRY_BASE": "0"})
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert len(failed) == 1, "the first ListParts was not refused"
    assert f"continued the upload a stopped worker left at byte {stored} of {SIZE} bytes" in r.stderr, r.stderr[-3000:]
    assert "sending it again from byte 0" not in r.stderr
    assert media_again == SIZE - stored
    assert pending() == []
    _verify_export(admin, bucket, tmp_path, media_sha256)
