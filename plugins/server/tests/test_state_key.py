"""A customer's own KMS key through `portshift serve` (docs/byok.md): the job form's ``state_key``.

Against real parts: the service as a subprocess on its PostgreSQL (TLS), its workers in the
sandbox (bubblewrap, a uid each), moto's KMS over TLS (``portshift.testing.kms_server``, which
refuses a disabled key as AWS does). The job's rows in the service database are sealed (a
``pg_dump`` holds no recording id, folder name or digest), the key's credentials reach the worker
only over the handover (in no file, log, argv or row), a key disabled by the customer makes a
resume be refused in one line naming the key (the service tries the key first, key_check.py), and
with the key enabled again the job resumes to a manifest that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portshift_source_chorus.simulator import ChorusSimulator

from portshift.testing import LocalCA
from portshift.testing.kms_server import KmsServer, moto_kms

from . import pg_fixtures
from .conftest import SERVICE_CONFIG, Certs, Server, canary_value, find_canary, start_job, start_server, wait_status
from .pg_fixtures import ServiceDatabase
from .test_api import verify_export
from .test_serve_postgres import pg_dump

pytest.importorskip("portshift_sink_s3", reason="the kms key provider comes with the S3 plugin")

pg_server, service_database = pg_fixtures.pg_server, pg_fixtures.service_database  # the fixtures

PLUGINS = "portshift-server,portshift-canary-test,portshift-source-chorus,portshift-sink-s3"


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    folder = tmp_path_factory.mktemp("kms")
    with moto_kms(LocalCA.create(folder / "ca"), folder / "moto.log") as server:
        yield server


def config_with_kms(kms: KmsServer, ca: Path) -> str:
    """The tests' service configuration, with moto as the KMS endpoint and as the S3 sink's store."""
    s3 = f'\n[sink.s3.fixed]\nendpoint_url = "{kms.url}"\nca_bundle = "{kms.ca_pem}"\naddressing_style = "path"\n'
    return SERVICE_CONFIG + s3 + f'\n[state_key]\nendpoint_url = "{kms.url}"\nca_bundle = "{ca}"\n'


def s3_client(kms: KmsServer) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=kms.url,
        region_name="eu-west-1",
        verify=str(kms.ca_pem),
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto accepts any key
        config=Config(s3={"addressing_style": "path"}),
    )


def new_key(kms: KmsServer) -> tuple[str, str]:
    meta = kms.client().create_key(Description="a customer's key")["KeyMetadata"]
    return meta["Arn"], meta["KeyId"]


def exported_root(server: Server, folder: str) -> Path:
    manifests = list((server.local_root / folder).rglob("portshift-manifest.txt"))
    assert len(manifests) == 1, manifests
    return manifests[0].parent


@pytest.fixture(scope="module")
def kms_service(
    kms: KmsServer, certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A service (unisolated, SQLite service database) that offers customer keys, for the refusals."""
    root = tmp_path_factory.mktemp("kms-service")
    server = start_server(
        certs,
        plugin_path,
        chorus,
        root,
        "--rate-jobs",
        "1000/60",
        "--max-jobs-per-client",  # the page starts its next job as soon as it shows the last one ended
        "4",
        config_text=config_with_kms(kms, kms.ca_pem),
        env_extra={"PORTSHIFT_LOAD_PLUGINS": PLUGINS},
    )
    yield server
    server.stop()


ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("state_key", "sink", "expected"),
    [
        ({"key": "file:/etc/shadow", "access_key_id": "a", "secret_access_key": "b"}, None, "file: keys name a file"),
        ({"key": "kms:arn:aws:kms:eu-west-1:1:key/zqxsecretish", "access_key_id": "a", "secret_access_key": "b"}, None,
         "state_key.key: not the ARN of a KMS key"),
        ({"key": "vault:zqxsecretish", "access_key_id": "a", "secret_access_key": "b"}, None, "AWS KMS keys only"),
        ({"key": ARN}, None, "give access_key_id and secret_access_key"),
        ({"key": ARN, "access_key_id": "zqxsecretish"}, None, "give access_key_id and secret_access_key"),
        ({"key": ARN, "use_sink_credentials": True}, None, "only with the s3 sink"),
        ({"key": ARN, "use_sink_credentials": True, "access_key_id": "a", "secret_access_key": "b"},
         {"type": "s3", "bucket": "zqx-bucket", "region": "eu-west-1", "access_key_id": "a", "secret_access_key": "b"},
         "either the key's own credentials or use_sink_credentials"),
        ({"key": ARN, "use_sink_credentials": "yes"}, None, "use_sink_credentials: must be true or false"),
        ({"key": ARN, "access_key_id": 7, "secret_access_key": "zqxsecretish"}, None, "access_key_id: must be a string"),
        ({"key": ARN, "colour": "x"}, None, "unknown field colour (valid: key, access_key_id"),
        ({"key": ARN, "Zqxsecretish!": "x"}, None, "unknown field (a key)"),
        ("kms:" + ARN, None, "state_key: must be an object"),
        ({"access_key_id": "a", "secret_access_key": "b"}, None, "state_key.key: required"),
    ],
)  # fmt: skip
def test_a_bad_state_key_is_refused_in_one_line_without_its_value(
    kms_service: Server, state_key: Any, sink: dict[str, Any] | None, expected: str
) -> None:
    body = {
        "source": {"type": "canary", "token": canary_value("refused"), "count": 1},
        "sink": sink or {"type": "local"},
        "state_key": state_key,
    }
    before = set((kms_service.data_dir / "jobs").iterdir())
    r = kms_service.client().post("/api/jobs", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert expected in error and "\n" not in error, error
    assert "zqxsecretish" not in error and "/etc/shadow" not in error and "1234abcd" not in error, error
    assert set((kms_service.data_dir / "jobs").iterdir()) == before  # nothing written for a refused request


def test_a_service_without_kms_support_says_so(server: Server) -> None:
    """The session's service does not load the S3 plugin (no ``kms`` key provider)."""
    c = server.client()
    assert c.get("/api/offers").json()["state_key"] == {"providers": []}
    r = c.post(
        "/api/jobs",
        json={
            "source": {"type": "canary", "token": canary_value("nokms"), "count": 1},
            "sink": {"type": "local"},
            "state_key": {"key": ARN, "access_key_id": "a", "secret_access_key": "b"},
        },
    )
    assert r.status_code == 400 and "does not offer customer keys" in r.json()["error"], r.text


def test_the_offers_name_the_key_providers(kms_service: Server) -> None:
    assert kms_service.client().get("/api/offers").json()["state_key"] == {"providers": ["kms"]}


def test_a_sandboxed_job_sealed_with_a_kms_key_on_postgres(
    service_database: ServiceDatabase,
    certs: Certs,
    plugin_path: Path,
    chorus: ChorusSimulator,
    worker_python: Path,
    kms: KmsServer,
) -> None:
    db = service_database
    arn, key_id = new_key(kms)
    root = Path(tempfile.mkdtemp(prefix="portshift-sandbox-kms-"))
    try:
        os.chmod(root, 0o755)
        plugins = root / "plugins"
        shutil.copytree(plugin_path, plugins)
        ca = root / "db-ca.pem"
        shutil.copyfile(db.server.ca_pem, ca)
        subprocess.run(["chmod", "-R", "a+rX", str(plugins), str(ca)], check=True)
        log_start = len(db.server.log_text())
        server = start_server(
            certs,
            plugins,
            chorus,
            root / "service",
            "--database",
            db.url,
            "--database-ca",
            str(ca),
            "--max-jobs-per-client",
            "2",
            config_text=config_with_kms(kms, kms.ca_pem),  # the service (root) copies it into each job's folder
            env_extra={"PORTSHIFT_SERVE_DATABASE_PASSWORD": db.password, "PORTSHIFT_LOAD_PLUGINS": PLUGINS},
            launcher=("--launcher", "sandbox", "--worker-python", str(worker_python)),
        )
        seed = secrets.randbelow(9000) + 1000
        folder = f"zqxacme-{secrets.token_hex(6)}"
        token = canary_value("kmstoken")
        # an access key id goes into the Authorization header as it is: no canary punctuation there
        access, secret = "AKIAZQX" + secrets.token_hex(8).upper(), canary_value("kmssecret")
        creds = {"access_key_id": access, "secret_access_key": secret}
        try:
            c = server.client()
            body = {
                "source": {"type": "canary", "token": token, "count": 20, "seed": seed, "delay": 0.5},
                "sink": {"type": "local", "folder": folder},
                "state_key": {"key": arn, **creds},  # the bare ARN: the service names it kms:arn:...
            }
            job = start_job(c, body)
            assert job["state_key"] == f"kms:{arn}" and job["sealed"] is None, job
            pid = server.worker_of(job["id"], timeout=30)
            cmdline, environ = Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/environ").read_bytes()
            assert not find_canary(cmdline + environ, [access, secret])
            # stop it mid-way: the customer disables the key, and the job's details are out of reach
            deadline = time.monotonic() + 60
            while (snap := c.get(f"/api/jobs/{job['id']}").json())["files"] < 4:
                assert snap["status"] == "running" and time.monotonic() < deadline, (snap["error"], snap["messages"])
                time.sleep(0.05)
            assert c.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
            cancelled = wait_status(c, job["id"], ("cancelled", "failed", "complete"))
            assert cancelled["status"] == "cancelled", cancelled
            kms.client().disable_key(KeyId=key_id)

            resume = {"source": {"token": token}, "state_key": creds}
            no_key = c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}})
            assert no_key.status_code == 400 and "give its credentials again" in no_key.json()["error"], no_key.text
            refused = c.post(f"/api/jobs/{job['id']}/resume", json=resume)  # the service tries the key first (key_check.py)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == (
                f"state_key: the service cannot use the key kms:{arn}: the key is disabled; "
                "check the key, its key policy and the credentials"
            )
            kept = c.get(f"/api/jobs/{job['id']}").json()
            assert kept["status"] == "cancelled" and kept["attempts"] == 1, kept  # nothing started
            assert 4 <= kept["files"] < 40 and kept["state_key"] == f"kms:{arn}"  # the clear fields stay

            kms.client().enable_key(KeyId=key_id)
            assert c.post(f"/api/jobs/{job['id']}/resume", json=resume).status_code == 202
            done = wait_status(c, job["id"], ("complete", "failed"), timeout=120)
            assert done["status"] == "complete" and done["files"] == 40 and done["sealed"] is None, done
            export = exported_root(server, folder)
            assert verify_export(export) == 41
            manifest = hashlib.sha256((export / "portshift-manifest.txt").read_bytes()).hexdigest()
            assert done["manifest_sha256"] == manifest  # shown from the service's memory, not stored
            digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in export.rglob("*") if p.is_file()]
            with db.admin() as a:  # the service's own row holds only clear fields
                row = a.execute(
                    "select manifest_sha256, export_root, sealed_with from portshift_service.jobs where id = %s", [job["id"]]
                ).fetchone()
                assert row == (None, None, f"kms:{arn}"), row
                sealed_rows = a.execute("select count(*) from public.job_keys where key_label = %s", [f"kms:{arn}"]).fetchone()
                assert sealed_rows[0] == 1
        finally:
            server.stop()

        dump = pg_dump(db)
        log = db.server.log_text()[log_start:].encode()
        assert job["id"].encode() in dump and b"s1:" in dump and arn.encode() in dump  # the control: real, sealed rows
        ids = [f"ex{seed:04d}{i:06d}" for i in range(20)]
        assert not find_canary(dump, [*ids, folder, manifest, *digests]), "the service database names the customer's data"
        assert b"parameters: $1 = " in log  # the control: the log holds the statements' values
        assert not find_canary(log, [*ids, folder, manifest, *digests]), "the statements (log_statement=all) name them"
        files = [p for p in (root / "service").rglob("*") if p.is_file() and not p.is_relative_to(export)]
        leaks = {str(p): h for p in files if (h := find_canary(p.read_bytes(), [access, secret, token]))}
        leaks |= {"pg_dump": find_canary(dump, [access, secret]), "server log": find_canary(log, [access, secret])}
        assert not any(leaks.values()), leaks
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_s3_job_sealed_with_the_sink_credentials_on_the_sqlite_service(kms_service: Server, kms: KmsServer) -> None:
    """``use_sink_credentials``: the S3 destination's credentials open the key too (unisolated
    launcher, SQLite service database: the worker's state file in the job's work folder)."""
    arn, _ = new_key(kms)
    bucket, seed = f"zqx-acme-{secrets.token_hex(6)}", secrets.randbelow(9000) + 1000
    s3 = s3_client(kms)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    access, secret = "AKIAZQX" + secrets.token_hex(8).upper(), canary_value("s3secret")
    c = kms_service.client()
    body = {
        "source": {"type": "canary", "token": canary_value("s3token"), "count": 3, "seed": seed},
        "sink": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "access_key_id": access, "secret_access_key": secret},
        "state_key": {"key": f"kms:{arn}", "use_sink_credentials": True},
    }
    job = start_job(c, body)
    done = wait_status(c, job["id"], ("complete", "failed", "partial"), timeout=120)
    assert done["status"] == "complete" and done["files"] == 6 and done["state_key"] == f"kms:{arn}", done
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    manifest_key = next(k for k in keys if k.endswith("portshift-manifest.txt"))
    manifest = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    assert done["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    digests = [line.split(b"  ", 1)[0].decode() for line in manifest.splitlines() if line and not line.startswith(b"#")]
    assert len(digests) == 7
    work = kms_service.work_dir(job["id"])
    state = b"".join(p.read_bytes() for p in work.glob("state.db*") if p.is_file())
    service = b"".join(p.read_bytes() for p in kms_service.data_dir.glob("service.db*") if p.is_file())
    assert job["id"].encode() in service and arn.encode() in state  # the control: the rows are there
    ids = [f"ex{seed:04d}{i:06d}" for i in range(3)]
    needles = [*ids, bucket, done["manifest_sha256"], *digests]
    assert not find_canary(state, needles) and not find_canary(service, needles)
    files = [p for p in kms_service.data_dir.rglob("*") if p.is_file()] + [kms_service.stdout, kms_service.stderr]
    assert not {str(p): h for p in files if (h := find_canary(p.read_bytes(), [secret]))}


def test_the_page_seals_a_job_with_a_kms_key_and_shows_a_disabled_one(
    kms_service: Server, kms: KmsServer, certs: Certs, tmp_path: Path
) -> None:
    """The job form's key fields in Chromium (driven as test_browser.py drives the page)."""
    from .test_browser import DRIVER, PLAYWRIGHT, spki_pin

    if not (Path("/usr/bin/chromium").exists() and PLAYWRIGHT.is_dir()):
        pytest.fail("the browser test needs Debian's chromium and playwright-core: run plugins/server/setup.sh")
    arn, _ = new_key(kms)
    disabled_arn, disabled_id = new_key(kms)
    kms.client().disable_key(KeyId=disabled_id)
    token, secret = canary_value("pagetoken"), canary_value("pagesecret")
    cfg = {
        "url": kms_service.url + "/",
        "token": token,
        "arn": arn,
        "disabledArn": disabled_arn,
        "accessKeyId": "AKIAZQX" + secrets.token_hex(8).upper(),
        "secretAccessKey": secret,
        "spki": spki_pin(certs.cert),
        "profile": str(tmp_path / "profile"),
        "playwright": str(PLAYWRIGHT),
    }
    r = subprocess.run(
        ["node", str(DRIVER.parent / "drive_state_key.cjs")],
        input=json.dumps(cfg),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout)
    # Chromium logs the refused submission (HTTP 400) of the disabled key
    refused_post = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    assert seen["fieldsetShown"] and seen["console"] == [refused_post], seen
    enabled, disabled = seen["enabled"], seen["disabled"]
    assert enabled["formError"] is None, seen
    assert enabled["status"] == "complete" and enabled["key"] == f"kms:{arn}" and enabled["sealed"] is None, enabled
    assert len(enabled["manifest"]) == 64 and enabled["secretAfterSubmit"] == ""
    # the disabled key is refused at submission (key_check.py): the form says why, no job starts
    assert disabled["formError"] == (
        f"state_key: the service cannot use the key kms:{disabled_arn}: the key is disabled; "
        "check the key, its key policy and the credentials"
    ), disabled
    assert disabled["key"] == f"kms:{arn}" and disabled["status"] == "complete", disabled  # still the last job shown
    leaks = {str(p): h for p in (tmp_path / "profile").rglob("*") if p.is_file() and (h := find_canary(p.read_bytes(), [secret]))}
    assert not leaks, leaks


@pytest.mark.parametrize(
    ("why", "shown"),
    [
        (
            "the key is disabled (the key's owner can enable it again or grant access; nothing recorded is lost)",
            "the key is disabled",
        ),
        ("the key policy does not allow portshift", "the key policy does not allow portshift"),
        ("KMS answered ThrottlingException (the key's owner ...)", "KMS answered ThrottlingException"),
        ("KMS could not be reached (EndpointConnectionError)", "KMS could not be reached (EndpointConnectionError)"),
    ],
)
def test_the_service_keeps_its_own_line_for_a_key_that_is_not_available(why: str, shown: str) -> None:
    from portshift_server.state_keys import key_unavailable, seal_outcome

    key = "kms:" + ARN
    line = f"the customer's key {key} is not available for job 20261205T020714Z-3493c7: {why}"
    assert key_unavailable(line) == (
        f"sealed: the customer's key is not available ({key}: {shown}); "
        "the key's owner can enable it again or grant access, nothing is lost"
    )
    # any other text of a sealed job's worker stays in memory only: it may name the customer's data
    other = "recording ex0042000001 failed: s3://zqx-bucket/prefix/ex0042000001.mp4 was refused"
    values = {"status": "failed", "error": other, "manifest_sha256": None, "export_root": "s3://zqx-bucket/prefix/x"}
    kept = seal_outcome(values, other)
    assert kept == {"error": other, "export_root": "s3://zqx-bucket/prefix/x"}
    assert values["export_root"] is None and "zqx" not in values["error"] and "ex0042" not in values["error"]
