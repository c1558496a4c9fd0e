"""End to end: `portshift run` into Azure (Azurite over HTTPS), then `portshift verify --store` as a
real subprocess with a separate read-only (rl) SAS: all ok; then one blob changed, one deleted and
one added -> exit 4 and a JSON report naming each. The read SAS appears in no output."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from .conftest import CONTAINER, Azurite
from .test_e2e import portshift, secret_forms

MiB = 1024 * 1024


def test_verify_store_with_a_read_only_sas(azurite: Azurite, admin: BlobServiceClient, tmp_path: Path) -> None:
    prefix = f"verify-{uuid.uuid4().hex[:8]}"
    sink_keys = (
        'type = "azure"\n'
        f'account_url = "{azurite.url}"\n'
        f'container = "{CONTAINER}"\n'
        f'prefix = "{prefix}"\n'
        f'ca_bundle = "{azurite.ca}"\n'
    )
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 2\n\n"
        # media a little over one 4 MiB read range, so verification reads some blobs in two ranges
        f'[source]\ntype = "example"\ncount = 3\nmedia_size = {4 * MiB + 1234}\n\n'
        f'[sink]\n{sink_keys}block_size = "2MiB"\n'
    )
    store = tmp_path / "store.toml"
    store.write_text(f"[store]\n{sink_keys}")  # the sink's keys, under [store]

    write_token = azurite.sas(permission="cw")
    read_token = azurite.sas(permission="rl")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    base_env.update({"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)})
    state = tmp_path / "state.db"

    run = portshift("run", "--config", str(job), "--state", str(state), env={**base_env, "PORTSHIFT_AZURE_SAS": write_token})
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    container = admin.get_container_client(CONTAINER)
    (manifest,) = [n for n in container.list_blob_names(name_starts_with=f"{prefix}/") if n.endswith("/portshift-manifest.txt")]
    root = manifest.rsplit("/", 1)[0]
    job_id = root.split("/", 1)[1]
    entries = [
        line.split("  ", 1)[1]
        for line in container.get_blob_client(manifest).download_blob().readall().decode().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(entries) == 7  # 3 x (media, metadata) + the JSON manifest

    # --- all good, read-only SAS from the environment, debug logging on -------------------------
    ok = portshift(
        "--log-level", "debug", "verify", job_id, "--store", str(store), env={**base_env, "PORTSHIFT_AZURE_SAS": read_token}
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    assert "OK: 7 ok, 0 differ, 0 missing, 0 extra" in ok.stdout
    assert "[store] sas" not in ok.stderr, "a read+list SAS draws no warning"

    # --- a write SAS is not a verification credential ---------------------------------------------
    wrong = portshift("verify", job_id, "--store", str(store), env={**base_env, "PORTSHIFT_AZURE_SAS": write_token})
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "verification needs read (r), list (l)" in wrong.stdout + wrong.stderr

    # --- damage the export: change one blob, delete one, add one ------------------------------------
    media = sorted(e for e in entries if e.endswith(".mp3"))
    metadata = sorted(e for e in entries if e.endswith(".json") and e != "portshift-manifest.json")
    changed, deleted = media[0], metadata[1]
    assert changed != deleted
    blob = container.get_blob_client(f"{root}/{changed}")
    original = blob.download_blob().readall()
    blob.upload_blob(original[:-1] + bytes([original[-1] ^ 0x01]), overwrite=True)  # one bit, same size
    container.get_blob_client(f"{root}/{deleted}").delete_blob()
    added = f"{changed.rsplit('/', 1)[0]}/notes.txt"
    container.get_blob_client(f"{root}/{added}").upload_blob(b"not in the manifest")

    bad = portshift(
        "--log-level",
        "debug",
        "verify",
        job_id,
        "--store",
        str(store),
        "--json",
        "--secrets-from-stdin",
        env=base_env,
        stdin=json.dumps({"store": {"sas": read_token}}),
    )
    assert bad.returncode == 4, bad.stdout + bad.stderr[-3000:]
    report = json.loads(bad.stdout)
    assert report == {"ok": 5, "differ": [changed], "missing": [deleted], "extra": [added], "bad_lines": [], "passed": False}

    text = portshift("verify", job_id, "--store", str(store), env={**base_env, "PORTSHIFT_AZURE_SAS": read_token})
    assert text.returncode == 4
    assert f"* differ   {changed}" in text.stdout and f"- missing  {deleted}" in text.stdout
    assert f"+ extra    {added}" in text.stdout
    assert "FAILED: 5 ok, 1 differ, 1 missing, 1 extra" in text.stdout

    # --- the read SAS (and the write SAS) appear in no output ----------------------------------------
    outputs = {"verify ok": ok, "verify with a write SAS": wrong, "verify --json": bad, "verify text": text}
    assert all(" DEBUG " in p.stderr for p in (ok, bad)), "debug logging was not on"
    assert f"read {azurite.url}/{CONTAINER}/{root}/" in ok.stderr, "the reader's own debug lines are in the output"
    for what, proc in outputs.items():
        for stream in (proc.stdout, proc.stderr):
            for form in secret_forms(read_token) | secret_forms(write_token):
                assert form not in stream, f"a SAS appears in the output of {what}"
            assert "sig=" not in stream, what
    for p in tmp_path.rglob("*"):
        if p.is_file():
            raw = p.read_bytes()
            for form in secret_forms(read_token):
                assert form.encode() not in raw, f"the read SAS appears in {p.name}"
