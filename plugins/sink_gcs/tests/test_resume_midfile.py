"""A big recording's GCS upload killed at 90 % is continued by the next run in the same resumable
session, not sent again (issue 21): the Chorus simulator over HTTPS, gcp-storage-emulator over TLS
(it answers a session's status query, ``Content-Range: bytes */*``, from any process, and checks
the whole-object CRC32C and MD5 of ``X-Goog-Hash`` at finalize), real `portshift run` processes
authenticated with the canary service-account key, SIGKILL, GNU `sha256sum -c`.

fake-gcs-server (the other local server of these tests) cannot be used for this: it takes the
status query ``PUT`` with ``Content-Range: bytes */*`` as the final request and creates the object
from the bytes received so far (HTTP 200, a truncated object), and a ``DELETE`` on a session URI
answers 499 without cancelling it. See the README.

``PORTSHIFT_RESUME_MIB`` sets the recording's size (64 MiB by default; 1024 is the issue's figure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from portshift.testing import PORTSHIFT, clean_env

from .conftest import BUCKET, CanaryKey, Certs, Server

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

MiB = 1024 * 1024
QUANTUM = 256 * 1024
TOKEN = "gcs-resume-" + "t" * 24
PLUGINS = "portshift-sink-gcs,portshift-source-chorus"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
SIZE = int(os.environ.get("PORTSHIFT_RESUME_MIB", "64")) * MiB


def _chunk_for(size: int) -> int:
    """At least 10 chunks (a multiple of 256 KiB), 4 MiB for 64 MiB."""
    return max(QUANTUM, size // 16 // QUANTUM * QUANTUM)


def _spec(size: int) -> Any:
    return chorus.TenantSpec(
        calls=1, seed=21, start=NOW - timedelta(days=3), end=NOW - timedelta(days=1), media_size=size,
        unprocessed_ratio=0.0, no_show_ratio=0.0, zero_duration_ratio=0.0, private_ratio=0.0, other_type_ratio=0.0,
    )  # fmt: skip


def _job(tmp_path: Path, sim: Any, server: Server, certs: Certs, chunk: int) -> tuple[Path, str]:
    prefix = f"resume-{uuid.uuid4().hex[:8]}"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 1\nsince = "{(NOW - timedelta(days=4)).date()}"\nuntil = "{NOW.date()}"\n\n'
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\nrequests_per_second = 0\n\n'
        f'[sink]\ntype = "gcs"\nbucket = "{BUCKET}"\nprefix = "{prefix}"\nchunk_size = {chunk}\n'
        f'api_endpoint = "{server.endpoint}"\nca_bundle = "{certs.ca_pem}"\n'
    )
    return job, prefix


def _env(tmp_path: Path, canary: CanaryKey) -> dict[str, str]:
    return clean_env(
        drop=("PORTSHIFT_", "GOOGLE_"),
        HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path),
        PORTSHIFT_GCS_KEY=canary.json,
        PORTSHIFT_CHORUS_TOKEN=TOKEN,
        PORTSHIFT_RESUME_ABOVE="16MiB",
        PORTSHIFT_LOAD_PLUGINS=PLUGINS,
    )


def _journal(state: Path) -> list[dict[str, str]]:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return [json.loads(data) for (data,) in db.execute("select data from sink_journal").fetchall()]
    except sqlite3.OperationalError:
        return []


def _journaled_offset(state: Path) -> int:
    """The offset of the resume point journaled for the media upload (0: none yet)."""
    points = [json.loads(e["resume"])["offset"] for e in _journal(state) if e.get("resume")]
    return max(points, default=0)


def _kill_at(
    argv: list[str], env: dict[str, str], state: Path, server: Server, size: int, chunk: int, fraction: float, sig: int = 9
) -> int:
    """Start `portshift run` and SIGKILL it (or ``sig``) once the journal says ``fraction`` of the
    media is stored: the chunks from the first boundary past that point are held at the emulator."""
    assert server.hold_file is not None
    held = -(-int(fraction * size) // chunk) * chunk
    server.hold_file.write_text(str(held))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while (stored := _journaled_offset(state)) < held:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the upload never reached the kill point"
            time.sleep(0.02)
    finally:
        proc.send_signal(sig)
        server.hold_file.unlink(missing_ok=True)  # the held chunk is answered 503 now
        proc.wait(60)
    assert proc.returncode == (-9 if sig == 9 else 130), proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    return max(stored, _journaled_offset(state))  # chunks in flight may have ended after a SIGTERM


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*argv, "--report", "json"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _verify_export(server: Server, prefix: str, tmp_path: Path, media_sha256: str) -> None:
    """Every file with GNU `sha256sum -c`, and GCS's own CRC32C and MD5 of the media object."""
    admin = server.admin
    (manifest,) = [n for n in admin.names(f"{prefix}/") if n.endswith("/portshift-manifest.txt")]
    root = manifest.rsplit("/", 1)[0]
    text = (admin.download(manifest) or b"").decode()
    entries = dict(reversed(line.split("  ", 1)) for line in text.splitlines() if line and not line.startswith("#"))
    local = tmp_path / "downloaded"
    for path in [*entries, "portshift-manifest.txt"]:
        target = local / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(admin.download(f"{root}/{path}") or b"")
    check = subprocess.run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], cwd=local, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (media,) = [p for p in entries if "/media." in p]
    assert entries[media] == media_sha256
    body = (local / media).read_bytes()
    meta = admin.meta(f"{root}/{media}")
    assert meta is not None and int(meta["size"]) == len(body)
    assert meta["crc32c"] == base64.b64encode(google_crc32c.Checksum(body).digest()).decode()
    assert meta["md5Hash"] == base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def _journal_holds_no_content(state: Path, sim: Any) -> None:
    """What a killed run left in the state: ids, the sealed session, checksum states; no content."""
    (entry,) = _journal(state)
    assert set(entry) == {"bucket", "name", "session", "piece_size", "pieces", "resume"}
    for record in json.loads(entry["pieces"]):
        crc, md5 = record.split(" ")
        assert 0 <= int(crc) < 2**32 and md5.startswith("md5-v1:") and len(md5) == len("md5-v1:") + 48
    (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
    head = b"".join(sim.tenant.media_chunks(cid, 0, 4096))
    raw = b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*") if p.is_file())  # the file, its WAL and shm
    for i in range(0, 4096, 64):  # no 64-byte block of the media, as bytes, hex or base64
        block = head[i : i + 64]
        assert block not in raw and block.hex().encode() not in raw and base64.b64encode(block) not in raw
    assert TOKEN.encode() not in raw


def _no_session_in_clear(tmp_path: Path, server: Server, canary: CanaryKey) -> None:
    """The open session's URI (and its upload id, raw and encoded) and the key appear in no file
    the run wrote; the journal holds the session sealed."""
    ids = server.admin.resumable()["ids"]
    assert ids, "the killed run left its session open"
    forms = set(canary.forms())
    for upload_id in ids:
        forms |= {upload_id, urllib.parse.quote(upload_id, safe=""), urllib.parse.quote_plus(upload_id)}
        forms.add(f"{server.endpoint}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("state")]
    assert files
    for p in files:
        raw = p.read_bytes()
        for form in forms:
            assert form.encode() not in raw, f"{form[:24]}… appears in {p.name}"
        assert b"upload_id" not in raw, p.name
    sealed = [e["session"] for e in _journal(tmp_path / "state.db")]
    assert sealed and all(s.startswith("gs1:") for s in sealed)


@pytest.mark.parametrize("mode", ["resume", "off"])
def test_a_big_upload_killed_at_90_percent_is_continued_in_its_session(
    tmp_path: Path, emulator: Server, certs: Certs, canary: CanaryKey, mode: str
) -> None:
    """``off``: the same second run with ``PORTSHIFT_RESUME_ABOVE=off``, what every run did before
    (the session cancelled, the whole recording sent again): the baseline of the figures."""
    state, chunk = tmp_path / "state.db", _chunk_for(SIZE)
    assert SIZE // chunk >= 10
    with chorus.ChorusSimulator(chorus.Tenant(_spec(SIZE)), token=TOKEN) as sim:
        job, prefix = _job(tmp_path, sim, emulator, certs, chunk)
        env = _env(tmp_path, canary)
        argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress", "--log-level", "info"]
        stored = _kill_at(argv, env, state, emulator, SIZE, chunk, 0.9)
        _journal_holds_no_content(state, sim)
        _no_session_in_clear(tmp_path, emulator, canary)
        before = emulator.admin.resumable()
        served_before = sim.stats.media_bytes
        r = _run(argv, {**env, "PORTSHIFT_RESUME_ABOVE": "16MiB" if mode == "resume" else "off"})
        media_again = sim.stats.media_bytes - served_before
        store_again = emulator.admin.resumable()["received"] - before["received"]
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    print(f"\n[GCS {mode}] killed at {stored / SIZE:.1%} of {SIZE // MiB} MiB ({SIZE // chunk} chunks of {chunk // MiB} MiB); "
          f"sent again: source {media_again} B ({media_again / SIZE:.1%}), "
          f"store {store_again} B ({store_again / SIZE:.1%})")  # fmt: skip
    if mode == "resume":
        assert f"continued the upload a stopped worker left at byte {stored} of {SIZE} bytes" in r.stderr, r.stderr[-3000:]
        assert "sending it again from byte 0" not in r.stderr
        # what the issue asks: at most 15 % of the bytes again, at the source and at the store
        assert media_again == SIZE - stored
        assert store_again <= 0.15 * SIZE, store_again
    else:
        assert "continued the upload" not in r.stderr
        assert media_again == SIZE and store_again >= SIZE
        # recover() cancelled the old session (nobody else could finish it): it is no longer open
        assert [i for i in before["ids"] if prefix in i] and not set(before["ids"]) & set(emulator.admin.resumable()["ids"])
    _verify_export(emulator, prefix, tmp_path, media_sha256)
    assert _journal(state) == []
    assert not any(prefix in i for i in emulator.admin.resumable()["ids"]), "a session was left open"


def test_an_upload_stopped_by_sigterm_keeps_its_session_and_is_continued(
    tmp_path: Path, emulator: Server, certs: Certs, canary: CanaryKey
) -> None:
    """A stop request (SIGTERM: a node drained) with chunks stored keeps the session instead of
    cancelling it: the next run sends only the rest."""
    size, state = 24 * MiB, tmp_path / "state.db"
    chunk = _chunk_for(size)
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        job, prefix = _job(tmp_path, sim, emulator, certs, chunk)
        env = _env(tmp_path, canary)
        argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"]
        stored = _kill_at(argv, env, state, emulator, size, chunk, 0.5, sig=signal.SIGTERM)
        assert [i for i in emulator.admin.resumable()["ids"] if prefix in i], "the session was not kept open"
        served_before = sim.stats.media_bytes
        r = _run(argv, env)
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert f"continued the upload a stopped worker left at byte {stored} of {size} bytes" in r.stderr, r.stderr[-3000:]
    assert media_again == size - stored
    _verify_export(emulator, prefix, tmp_path, media_sha256)
    assert _journal(state) == []


def test_a_session_lost_between_runs_is_said_once_and_the_file_sent_again(
    tmp_path: Path, emulator: Server, certs: Certs, canary: CanaryKey
) -> None:
    """GCS no longer has the session (cancelled; expired after a week): one line says so, the
    recording is sent again from byte 0 in a new session, the export is whole."""
    size, state = 24 * MiB, tmp_path / "state.db"
    chunk = _chunk_for(size)
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        job, prefix = _job(tmp_path, sim, emulator, certs, chunk)
        env = _env(tmp_path, canary)
        argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"]
        _kill_at(argv, env, state, emulator, size, chunk, 0.5)
        emulator.admin.http.delete(f"{emulator.endpoint}/_test/resumable", timeout=30).raise_for_status()
        served_before = sim.stats.media_bytes
        r = _run(argv, env)
        media_again = sim.stats.media_bytes - served_before
        (cid,) = [c.engagement_id for c in sim.tenant.exportable()]
        media_sha256 = sim.tenant.media_sha256(cid)
    assert r.stderr.count("cannot be continued") == 1, r.stderr[-3000:]
    assert "GCS no longer has the resumable session" in r.stderr and "sending it again from byte 0" in r.stderr
    assert media_again == size
    _verify_export(emulator, prefix, tmp_path, media_sha256)
    assert _journal(state) == []
