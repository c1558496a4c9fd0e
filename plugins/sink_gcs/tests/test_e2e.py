"""End to end: `portshift run` as a real subprocess, example source -> GCS sink (gcp-storage-emulator
over HTTPS), authenticated with the canary service-account key through the loopback token endpoint.
Then an independent check: every object in the manifest is downloaded and re-hashed, and the CRC32C
and MD5 GCS stored are compared; `portshift verify --store` agrees; and the key, the JWT grant, the
access token and any resumable session id are searched for in every output and every file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import google_crc32c

from .conftest import BUCKET, CHUNK, CanaryKey, Certs, Server, TokenServer


def portshift(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portshift", *args], capture_output=True, text=True, env=env, input=stdin, timeout=180
    )


def test_portshift_run_into_gcs_then_rehash_every_object(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey, tmp_path: Path
) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    sink_section = (
        'type = "gcs"\n'
        f'bucket = "{BUCKET}"\n'
        f'prefix = "{prefix}"\n'
        'chunk_size = "256KiB"\n'
        f'api_endpoint = "{emulator.endpoint}"\n'
        f'ca_bundle = "{certs.ca_pem}"\n'
    )
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 2\n\n[source]\ntype = "example"\ncount = 3\nmedia_size = 700001\n\n[sink]\n{sink_section}'
    )
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "GOOGLE_"))}
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "TMPDIR": str(tmp_path),
            "PORTSHIFT_GCS_KEY": canary.json,
            "STORAGE_EMULATOR_HOST": "http" + "://127.0.0.1:9",
        }
    )
    no_key = {k: v for k, v in env.items() if k != "PORTSHIFT_GCS_KEY"}
    n_grants = len(token_server.assertions)

    check = portshift(
        "check", "--config", str(job), "--secrets-from-stdin", env=no_key, stdin=json.dumps({"sink": {"key": canary.json}})
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = portshift("--log-level", "debug", "--log-format", "json", "run", "--config", str(job), "--state", str(state), env=env)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert len(token_server.assertions) >= n_grants + 2, "the key was exchanged for tokens (check and run)"

    # --- the independent check ------------------------------------------------------------------
    admin = emulator.admin
    names = admin.names(f"{prefix}/")
    manifests = [n for n in names if n.endswith("/portshift-manifest.txt")]
    assert len(manifests) == 1, names
    root = manifests[0].rsplit("/", 1)[0]
    manifest = (admin.download(manifests[0]) or b"").decode()
    entries = [line.split("  ", 1) for line in manifest.splitlines() if line and not line.startswith("#")]
    assert len(entries) == 7, manifest  # 3 media + 3 metadata + the JSON manifest
    resumable = 0
    for digest, path in entries:
        data = admin.download(f"{root}/{path}")
        assert data is not None, f"{path} is in the manifest but not in the bucket"
        assert hashlib.sha256(data).hexdigest() == digest, f"{path}: content differs from the manifest"
        meta = admin.meta(f"{root}/{path}")
        assert meta is not None and int(meta["size"]) == len(data)
        assert meta["md5Hash"] == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        assert meta["crc32c"] == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
        resumable += len(data) > CHUNK
    assert resumable == 3, "each media file (700001 bytes) should have gone up as a resumable upload"
    listed = {f"{root}/{p}" for _, p in entries}
    stray = {n for n in names if n not in listed and not n.startswith(f"{root}/portshift-")}
    assert not stray, f"objects not in the manifest: {stray}"

    # --- portshift verify --store, with the reader (anonymous: loopback test server only) ----------
    store = tmp_path / "store.toml"
    store.write_text(f"[store]\n{sink_section}anonymous = true\n")
    verify = portshift("verify", "--store", str(store), root.split("/", 1)[1], env=no_key)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # --- no secret anywhere: outputs, state DB (+ WAL/journal), any file written ---------------------
    forms = set(canary.forms())
    for assertion in token_server.assertions[n_grants:]:
        forms.add(assertion)
        forms.update(p for p in assertion.split(".") if len(p) > 20)
    forms.update(token_server.issued)
    outputs = {"check": check.stdout + check.stderr, "run": run.stdout + run.stderr, "verify": verify.stdout + verify.stderr}
    assert '"level": "debug"' in run.stderr or '"level": "debug"' in run.stdout, "debug logging was not on"
    for what, text in outputs.items():
        for form in forms:
            assert form not in text, f"a secret ({form[:12]}…) appears in the {what} output"
        assert "upload_id" not in text and "Making request" not in text, what
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (job, store)]
    assert any(p.name.startswith("state.db") for p in files)
    for p in files:
        raw = p.read_bytes()
        for form in forms:
            assert form.encode() not in raw, f"a secret appears in {p.name}"
        assert b"upload_id" not in raw, p.name
