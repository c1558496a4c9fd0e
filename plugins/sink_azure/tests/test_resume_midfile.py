"""A big recording's block upload killed at 90 % is continued by the next run, not sent again
(issue 21): the Chorus simulator over HTTPS, Azurite over TLS behind a proxy that counts what
reaches the store (and holds the blocks past the kill point), real `portshift run` processes,
SIGKILL, GNU `sha256sum -c`, the blob's Content-MD5 as Azure reports it.

``PORTSHIFT_RESUME_MIB`` sets the recording's size (64 MiB in `make test`; 1024 for the issue's
figure, outside `make test`)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from portshift.testing import PORTSHIFT, LocalCA, clean_env

from .conftest import CONTAINER, Azurite
from .store_proxy import Seen, StoreProxy
from .test_e2e import secret_forms

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is part of make setup")

MiB = 1024 * 1024
BLOCK = 4 * MiB
TOKEN = "az-resume-" + "t" * 24
PLUGINS = "portshift-sink-azure,portshift-source-chorus"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
SIZE = int(os.environ.get("PORTSHIFT_RESUME_MIB", "64")) * MiB
#: the size of the other cases: small in `make test`, SIZE when it is set
SMALL = SIZE if "PORTSHIFT_RESUME_MIB" in os.environ else 40 * MiB


@pytest.fixture
def proxy(certs: LocalCA, azurite: Azurite) -> Iterator[StoreProxy]:
    p = StoreProxy(certs, azurite.port)
    yield p
    p.close()


def _spec(size: int) -> Any:
    return chorus.TenantSpec(
        calls=1, seed=21, start=NOW - timedelta(days=3), end=NOW - timedelta(days=1), media_size=size,
        unprocessed_ratio=0.0, no_show_ratio=0.0, zero_duration_ratio=0.0, private_ratio=0.0, other_type_ratio=0.0,
    )  # fmt: skip


class Export:
    """One job into Azurite through the proxy, run by real `portshift run` processes."""

    def __init__(self, tmp_path: Path, sim: Any, azurite: Azurite, proxy: StoreProxy, size: int, permission: str) -> None:
        self.size, self.proxy, self.sim = size, proxy, sim
        self.prefix = f"resume-{uuid.uuid4().hex[:8]}"
        self.state = tmp_path / "s.db"
        self.sas = azurite.sas(permission=permission)
        account = f"https://127.0.0.1:{proxy.port}/{azurite.url.rsplit('/', 1)[1]}"
        job = tmp_path / "job.toml"
        job.write_text(
            f'[job]\ntransfers = 1\nsince = "{(NOW - timedelta(days=4)).date()}"\nuntil = "{NOW.date()}"\n\n'
            f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\nrequests_per_second = 0\n\n'
            f'[sink]\ntype = "azure"\naccount_url = "{account}"\ncontainer = "{CONTAINER}"\nprefix = "{self.prefix}"\n'
            f'block_size = "{BLOCK // MiB}MiB"\nca_bundle = "{azurite.ca}"\n'
        )
        self.env = clean_env(
            PORTSHIFT_AZURE_SAS=self.sas,
            PORTSHIFT_CHORUS_TOKEN=TOKEN,
            PORTSHIFT_RESUME_ABOVE="16MiB",
            PORTSHIFT_LOAD_PLUGINS=PLUGINS,
            HOME=str(tmp_path / "home"),
        )
        self.argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(self.state), "--no-progress", "--log-level", "info"]

    def journal(self) -> list[dict[str, str]]:
        try:
            with sqlite3.connect(f"file:{self.state}?mode=ro", uri=True, timeout=5) as db:
                return [json.loads(d) for (d,) in db.execute("select data from sink_journal").fetchall()]
        except sqlite3.OperationalError:
            return []

    def journaled_offset(self) -> int:
        """The offset of the resume point journaled for the media upload (0: none yet)."""
        return max((int(json.loads(e["resume"])["offset"]) for e in self.journal() if e.get("resume")), default=0)

    def kill_at(self, fraction: float) -> int:
        """Start `portshift run` and SIGKILL it once the journal says ``fraction`` of the media is
        stored: the blocks past that point are held at the proxy until then, so the kill lands there."""
        held = -(-int(fraction * self.size) // BLOCK) + 1  # the first block number past the fraction

        def hold(req: Seen) -> bool:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.target).query)
            if req.method != "PUT" or query.get("comp") != ["block"]:
                return False
            number = base64.b64decode(query["blockid"][0]).decode().rsplit("-", 1)[1]
            return int(number) >= held

        self.proxy.hold = hold
        proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        try:
            while (stored := self.journaled_offset()) < fraction * self.size:
                assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the upload never reached the kill point"
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait(30)
            self.proxy.release.set()
            self.proxy.hold = lambda req: False
        assert stored < self.size, "the kill came after the last block"
        return stored

    def run(self) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.argv, "--report", "json"], capture_output=True, text=True, env=self.env, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    def media_sha256(self) -> str:
        (cid,) = [c.engagement_id for c in self.sim.tenant.exportable()]
        return str(self.sim.tenant.media_sha256(cid))


def _verify_export(admin: BlobServiceClient, prefix: str, tmp_path: Path, media_sha256: str) -> None:
    """Every file with GNU `sha256sum -c`; the media blob's Content-MD5 and sha256 metadata as Azure
    reports them equal the MD5 and SHA-256 of the bytes downloaded."""
    container = admin.get_container_client(CONTAINER)
    (manifest,) = [
        b.name for b in container.list_blobs(name_starts_with=f"{prefix}/") if b.name.endswith("/portshift-manifest.txt")
    ]
    root = manifest.rsplit("/", 1)[0]
    text = container.get_blob_client(manifest).download_blob().readall().decode()
    entries = dict(reversed(line.split("  ", 1)) for line in text.splitlines() if line and not line.startswith("#"))
    local = tmp_path / "downloaded"
    for path in [*entries, "portshift-manifest.txt"]:
        target = local / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            container.get_blob_client(f"{root}/{path}").download_blob().readinto(out)
    check = subprocess.run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], cwd=local, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (media,) = [p for p in entries if "/media." in p]
    assert entries[media] == media_sha256
    props = container.get_blob_client(f"{root}/{media}").get_blob_properties()
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with (local / media).open("rb") as f:
        while piece := f.read(MiB):
            md5.update(piece)
            sha256.update(piece)
    assert props.size == (local / media).stat().st_size
    assert bytes(props.content_settings.content_md5) == md5.digest()
    assert props.metadata["sha256"] == sha256.hexdigest() == media_sha256


def _uncommitted(admin: BlobServiceClient, export: Export) -> list[tuple[str, int]]:
    (entry,) = export.journal()
    _, blocks = admin.get_blob_client(CONTAINER, entry["blob"]).get_block_list("uncommitted")
    return [(str(b.id), int(b.size)) for b in blocks]


def _journal_holds_no_content_and_no_secret(export: Export) -> None:
    """What a killed run left in the state: names, block ids, MD5s, hash states; nothing else."""
    (entry,) = export.journal()
    assert set(entry) == {"container", "blob", "attempt", "piece_size", "pieces", "resume"}
    assert entry["container"] == CONTAINER and entry["blob"].startswith(f"{export.prefix}/")
    for n, record in enumerate(json.loads(entry["pieces"]), start=1):
        block, md5, state = record.split(" ")
        assert block == f"{entry['attempt']}-{n:06d}" and len(base64.b64decode(md5)) == 16
        assert state.startswith("md5-v1:") and len(state) == len("md5-v1:") + 48  # 4 chaining words, a bit count
    point = json.loads(entry["resume"])
    assert set(point) == {"v", "offset", "sha256_state", "size", "validator", "recording", "artifact", "ext"}
    (cid,) = [c.engagement_id for c in export.sim.tenant.exportable()]
    head = b"".join(export.sim.tenant.media_chunks(cid, 0, 4096))
    raw = b"".join(p.read_bytes() for p in export.state.parent.glob(export.state.name + "*") if p.is_file())  # + WAL, shm
    for i in range(0, 4096, 64):  # no 64-byte block of the media, as bytes, hex or base64
        block = head[i : i + 64]
        assert block not in raw and block.hex().encode() not in raw and base64.b64encode(block) not in raw
    for secret in (*secret_forms(export.sas), TOKEN, "sig="):  # the SAS in every form, the Chorus token
        assert secret.encode() not in raw
    text = json.dumps(entry)
    assert "https:" not in text and "?" not in text  # no URL


@pytest.mark.parametrize(
    ("mode", "permission"),
    [("resume", "rcw"), ("resume", "cw"), ("off", "cw")],
    ids=["sas-rcw-blocks-listed", "sas-cw-checked-at-commit", "resume-off-baseline"],
)
def test_a_big_upload_killed_at_90_percent_is_continued_by_the_next_run(
    tmp_path: Path, azurite: Azurite, admin: BlobServiceClient, proxy: StoreProxy, mode: str, permission: str
) -> None:
    """With read on the SAS the blocks are listed before the rest is sent; with the least privilege
    (create + write) Put Block List alone checks them: either way only the rest is sent again.
    ``off``: the same second run with ``PORTSHIFT_RESUME_ABOVE=off``, what every run did before
    (the whole recording sent again): the baseline of the figures."""
    size = SIZE if permission == "rcw" else SMALL  # >= 10 blocks either way
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        export = Export(tmp_path, sim, azurite, proxy, size, permission)
        stored = export.kill_at(0.9)
        # the upload is left as a crash leaves it: the journaled blocks staged, uncommitted
        (entry,) = export.journal()
        journaled = [record.split(" ")[0] for record in json.loads(entry["pieces"])]
        staged = dict(_uncommitted(admin, export))
        assert len(journaled) * BLOCK == stored and all(staged.get(b) == BLOCK for b in journaled), (journaled, staged)
        _journal_holds_no_content_and_no_secret(export)
        served_before, seen_before = sim.stats.media_bytes, len(proxy.seen)
        if mode == "off":
            export.env["PORTSHIFT_RESUME_ABOVE"] = "off"
        r = export.run()
        media_again = sim.stats.media_bytes - served_before
        store_again = proxy.body_bytes(seen_before)
        media_sha256 = export.media_sha256()
    print(f"\n[{mode}, sp={permission}] killed at {stored / size:.1%} of {size // MiB} MiB ({size // BLOCK} blocks); "
          f"sent again: source {media_again} B ({media_again / size:.1%}), "
          f"store {store_again} B ({store_again / size:.1%})")  # fmt: skip
    if mode == "resume":
        assert f"continued the upload a stopped worker left at byte {stored} of {size} bytes" in r.stderr, r.stderr[-3000:]
        assert "sending it again from byte 0" not in r.stderr
        # what the issue asks: at most 15 % of the bytes again, at the source and at the store
        assert media_again == size - stored
        assert store_again <= 0.15 * size, store_again
    else:
        assert "continued the upload" not in r.stderr
        assert "1 uploads left mid-file are not continued" in r.stderr, r.stderr[-3000:]  # recover(): nothing to remove
        assert media_again == size and store_again >= size
    _verify_export(admin, export.prefix, tmp_path, media_sha256)
    assert export.journal() == []


def test_a_block_azure_holds_with_another_size_makes_it_start_again_once(
    tmp_path: Path, azurite: Azurite, admin: BlobServiceClient, proxy: StoreProxy
) -> None:
    """Get Block List shows a journaled block with another size (the SAS can read): one warning,
    the recording is sent again from byte 0, the export is whole."""
    size = 24 * MiB
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        export = Export(tmp_path, sim, azurite, proxy, size, "rcw")
        export.kill_at(0.5)
        (entry,) = export.journal()
        second = json.loads(entry["pieces"])[1].split(" ")[0]
        admin.get_blob_client(CONTAINER, entry["blob"]).stage_block(second, b"not the journaled block")
        served_before = sim.stats.media_bytes
        r = export.run()
        media_again = sim.stats.media_bytes - served_before
        media_sha256 = export.media_sha256()
    assert r.stderr.count("cannot be continued") == 1, r.stderr[-3000:]
    assert f"Azure holds block 2 with 23 bytes, {BLOCK} were staged" in r.stderr and "sending it again from byte 0" in r.stderr
    assert media_again == size
    _verify_export(admin, export.prefix, tmp_path, media_sha256)
    assert export.journal() == []


def test_blocks_azure_dropped_are_found_by_put_block_list_and_it_starts_again_once(
    tmp_path: Path, azurite: Azurite, admin: BlobServiceClient, proxy: StoreProxy
) -> None:
    """The uncommitted blocks are gone (the blob was committed by someone else since, which drops
    them) and the SAS cannot list blocks: Put Block List refuses the list, one warning, the
    recording is sent again from byte 0, the export is whole."""
    size = 24 * MiB
    with chorus.ChorusSimulator(chorus.Tenant(_spec(size)), token=TOKEN) as sim:
        export = Export(tmp_path, sim, azurite, proxy, size, "cw")
        stored = export.kill_at(0.5)
        (entry,) = export.journal()
        other = admin.get_blob_client(CONTAINER, entry["blob"])
        other.stage_block("someone-else-0000000001", b"x")  # ids of one length per blob (23)
        other.commit_block_list(["someone-else-0000000001"])
        assert _uncommitted(admin, export) == []
        served_before = sim.stats.media_bytes
        r = export.run()
        media_again = sim.stats.media_bytes - served_before
        media_sha256 = export.media_sha256()
    assert r.stderr.count("cannot be continued") == 1, r.stderr[-3000:]
    assert "Azure no longer holds the blocks staged before" in r.stderr and "sending it again from byte 0" in r.stderr
    # the rest was read once for the continuation Azure refused at the commit, then all of it
    assert media_again == (size - stored) + size
    _verify_export(admin, export.prefix, tmp_path, media_sha256)
    assert export.journal() == []
