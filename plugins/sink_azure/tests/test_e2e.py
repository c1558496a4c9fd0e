"""End to end: `portshift run` as a real subprocess, example source -> Azure sink (Azurite over HTTPS),
then an independent check: every blob in the manifest is downloaded and re-hashed, and its stored
Content-MD5 and sha256 metadata compared; the SAS is searched for in every output and file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from .conftest import CONTAINER, Azurite

MiB = 1024 * 1024


def portshift(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portshift", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=180,
    )


def secret_forms(token: str) -> set[str]:
    sig = urllib.parse.parse_qs(token)["sig"][0]
    raw_sig = next(p for p in token.split("&") if p.startswith("sig=")).split("=", 1)[1]
    return {
        token,
        sig,
        raw_sig,
        urllib.parse.quote(sig, safe=""),
        json.dumps(sig)[1:-1],
        base64.b64encode(sig.encode()).decode().rstrip("="),
    }


def test_portshift_run_into_azure_then_rehash_every_blob(azurite: Azurite, admin: BlobServiceClient, tmp_path: Path) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 2\n\n"
        '[source]\ntype = "example"\ncount = 3\nmedia_size = 2621447\n\n'
        "[sink]\n"
        'type = "azure"\n'
        f'account_url = "{azurite.url}"\n'
        f'container = "{CONTAINER}"\n'
        f'prefix = "{prefix}"\n'
        'block_size = "1MiB"\n'
        f'ca_bundle = "{azurite.ca}"\n'
    )
    token = azurite.sas()
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update({"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path), "PORTSHIFT_AZURE_SAS": token})

    check = portshift(
        "check",
        "--config",
        str(job),
        "--secrets-from-stdin",
        env={k: v for k, v in env.items() if k != "PORTSHIFT_AZURE_SAS"},
        stdin=json.dumps({"sink": {"sas": token}}),
    )
    assert check.returncode == 0, check.stdout + check.stderr

    run = portshift("--log-level", "debug", "--log-format", "json", "run", "--config", str(job), "--state", str(state), env=env)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]

    # --- the independent check ------------------------------------------------------------------
    container = admin.get_container_client(CONTAINER)
    names = {b.name for b in container.list_blobs(name_starts_with=f"{prefix}/")}
    manifests = [n for n in names if n.endswith("/portshift-manifest.txt")]
    assert len(manifests) == 1, names
    root = manifests[0].rsplit("/", 1)[0]
    manifest = container.get_blob_client(manifests[0]).download_blob().readall().decode()
    entries = [line.split("  ", 1) for line in manifest.splitlines() if line and not line.startswith("#")]
    # 3 recordings x (media, metadata) + the JSON manifest; the .txt manifest is checked above
    assert len(entries) == 7, manifest
    multi_block = 0
    for digest, path in entries:
        blob = container.get_blob_client(f"{root}/{path}")
        data = blob.download_blob().readall()
        assert hashlib.sha256(data).hexdigest() == digest, f"{path}: content differs from the manifest"
        props = blob.get_blob_properties()
        assert props.size == len(data)
        assert bytes(props.content_settings.content_md5) == hashlib.md5(data, usedforsecurity=False).digest(), path
        assert props.metadata.get("sha256") == digest, path
        multi_block += len(data) > MiB
    assert multi_block == 3, "each media file (2.5 MiB) should have gone up in blocks"
    listed = {f"{root}/{p}" for _, p in entries}
    assert names == listed | {manifests[0]}, "blobs under the prefix and the manifest differ"

    # --- the SAS is nowhere: outputs, state DB (+ WAL/journal), any file written ---------------------
    forms = secret_forms(token)
    outputs = {"check stdout": check.stdout, "check stderr": check.stderr, "run stdout": run.stdout, "run stderr": run.stderr}
    assert '"level": "debug"' in run.stderr or '"level": "debug"' in run.stdout, "debug logging was not on"
    for what, text in outputs.items():
        for form in forms:
            assert form not in text, f"the SAS appears in {what}"
        assert "sig=" not in text, what
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != job]
    assert any(p.name.startswith("state.db") for p in files)
    for p in files:
        raw = p.read_bytes()
        for form in forms:
            assert form.encode() not in raw, f"the SAS appears in {p.name}"
        assert b"sig=" not in raw, p.name
