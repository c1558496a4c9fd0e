"""The service wraps and unwraps once with the customer's key before it accepts a sealed job (key_check.py).

Against real parts: the service as a subprocess (SQLite service database, unisolated workers),
moto's KMS over TLS (``portshift.testing.kms_server``, which refuses a disabled key as AWS does)
with moto's IAM authentication switched on, so that credentials moto does not know are refused
as AWS refuses them. A refused request leaves no work folder and no job row.
"""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portshift_server.offers import RequestError
from portshift_source_chorus.simulator import ChorusSimulator

from portshift.testing import LocalCA
from portshift.testing.kms_server import KmsServer, moto_kms
from portshift.testing.servers import free_port

from .conftest import Certs, Server, canary_value, find_canary, start_job, start_server, wait_status
from .test_state_key import PLUGINS, config_with_kms

pytest.importorskip("portshift_sink_s3", reason="the kms key provider comes with the S3 plugin")


@pytest.fixture(scope="module")
def iam_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KmsServer, dict[str, str]]]:
    """moto's KMS with IAM authentication on, and the credentials of a user it knows."""
    import boto3

    folder = tmp_path_factory.mktemp("kms-auth")
    with moto_kms(LocalCA.create(folder / "ca"), folder / "moto.log") as server:
        iam = boto3.client(
            "iam",
            endpoint_url=server.url,
            region_name="us-east-1",
            verify=str(server.ca_pem),
            aws_access_key_id="setup",
            aws_secret_access_key="setup",  # noqa: S106 - before authentication is on
        )
        iam.create_user(UserName="customer")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="customer", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="customer")["AccessKey"]
        request = urllib.request.Request(
            server.url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(server.ca_pem))) as r:
            assert json.loads(r.read())["status"] == "ok"  # from now on every request is authenticated
        yield server, {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def kms_client(kms: KmsServer, creds: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "kms",
        endpoint_url=kms.url,
        region_name="eu-west-1",
        verify=str(kms.ca_pem),
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
    )


@pytest.fixture(scope="module")
def auth_service(
    iam_kms: tuple[KmsServer, dict[str, str]],
    certs: Certs,
    plugin_path: Path,
    chorus: ChorusSimulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    kms, _ = iam_kms
    server = start_server(
        certs,
        plugin_path,
        chorus,
        tmp_path_factory.mktemp("kms-auth-service"),
        "--rate-jobs",
        "1000/60",
        config_text=config_with_kms(kms, kms.ca_pem),
        env_extra={"PORTSHIFT_LOAD_PLUGINS": PLUGINS},
    )
    yield server
    server.stop()


def job_rows(server: Server) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'service.db'}?mode=ro", uri=True) as db:
        return int(db.execute("select count(*) from jobs").fetchone()[0])


def submit(server: Server, arn: str, creds: dict[str, str], token: str) -> Any:
    body = {
        "source": {"type": "canary", "token": token, "count": 2},
        "sink": {"type": "local"},
        "state_key": {"key": arn, **creds},
    }
    return server.client().post("/api/jobs", json=body)


def assert_no_secret(server: Server, creds: dict[str, str]) -> None:
    """No file of the service (its data folder, its logs) holds the key's credentials."""
    files = [p for p in server.data_dir.rglob("*") if p.is_file()] + [server.stdout, server.stderr]
    values = [v for k, v in creds.items() if k != "access_key_id"]  # the id is not a secret (and is shown by AWS)
    leaks = {str(p): h for p in files if (h := find_canary(p.read_bytes(), values))}
    assert not leaks, leaks


def assert_refused(server: Server, arn: str, creds: dict[str, str], status: int, expected: str) -> str:
    """The request is refused with ``status`` in one line naming the key, no secret, nothing written."""
    token = canary_value("keychecktoken")
    before_dirs, before_rows = set((server.data_dir / "jobs").iterdir()), job_rows(server)
    r = submit(server, arn, creds, token)
    assert r.status_code == status, r.text
    line = r.json()["error"]
    assert line.startswith("state_key: the service c") and f"kms:{arn}" in line and expected in line, line
    assert "\n" not in line and "Traceback" not in line
    assert not find_canary(line.encode(), [token, *creds.values()]), line
    assert set((server.data_dir / "jobs").iterdir()) == before_dirs and job_rows(server) == before_rows
    assert_no_secret(server, creds)
    return str(line)


def test_a_good_key_is_accepted_and_the_job_completes(auth_service: Server, iam_kms: tuple[KmsServer, dict[str, str]]) -> None:
    kms, creds = iam_kms
    arn = kms_client(kms, creds).create_key()["KeyMetadata"]["Arn"]
    before = job_rows(auth_service)
    c = auth_service.client()
    job = start_job(c, {"source": {"type": "canary", "token": canary_value("good"), "count": 2}, "sink": {"type": "local"},
                        "state_key": {"key": arn, **creds}})  # fmt: skip
    assert job["state_key"] == f"kms:{arn}" and job_rows(auth_service) == before + 1
    done = wait_status(c, job["id"], ("complete", "failed", "partial"), timeout=120)
    assert done["status"] == "complete" and done["files"] == 4 and done["sealed"] is None, done
    assert_no_secret(auth_service, creds)


def test_a_disabled_key_is_refused_at_submission(auth_service: Server, iam_kms: tuple[KmsServer, dict[str, str]]) -> None:
    kms, creds = iam_kms
    meta = kms_client(kms, creds).create_key()["KeyMetadata"]
    kms_client(kms, creds).disable_key(KeyId=meta["KeyId"])
    assert_refused(auth_service, meta["Arn"], creds, 400, ": the key is disabled; check the key")


def test_a_key_that_does_not_exist_is_refused_at_submission(
    auth_service: Server, iam_kms: tuple[KmsServer, dict[str, str]]
) -> None:
    _, creds = iam_kms
    arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-1111-2222-3333-444444444444"
    assert_refused(auth_service, arn, creds, 400, ": the key does not exist")


@pytest.mark.parametrize("wrong", ["access_key_id", "secret_access_key"])
def test_wrong_credentials_are_refused_at_submission(
    auth_service: Server, iam_kms: tuple[KmsServer, dict[str, str]], wrong: str
) -> None:
    kms, creds = iam_kms
    arn = kms_client(kms, creds).create_key()["KeyMetadata"]["Arn"]
    bad = {**creds, wrong: "AKIAZQX" + secrets.token_hex(8).upper()}
    assert_refused(auth_service, arn, bad, 400, ": KMS refused the credentials")


def test_a_sealed_job_resumes_only_when_the_key_works(auth_service: Server, iam_kms: tuple[KmsServer, dict[str, str]]) -> None:
    """A resume carries the key's credentials again: they are checked with the job's key too."""
    kms, creds = iam_kms
    meta = kms_client(kms, creds).create_key()["KeyMetadata"]
    c = auth_service.client()
    token = canary_value("resume")
    job = start_job(c, {"source": {"type": "canary", "token": token, "count": 40, "delay": 0.5}, "sink": {"type": "local"},
                        "state_key": {"key": meta["Arn"], **creds}})  # fmt: skip
    assert c.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
    stopped = wait_status(c, job["id"], ("cancelled", "failed", "complete"))
    assert stopped["status"] in ("cancelled", "failed"), stopped  # failed: stopped before it could say so
    kms_client(kms, creds).disable_key(KeyId=meta["KeyId"])
    r = c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}, "state_key": creds})
    assert r.status_code == 400 and f"kms:{meta['Arn']}: the key is disabled" in r.json()["error"], r.text
    after = c.get(f"/api/jobs/{job['id']}").json()
    assert (after["status"], after["attempts"], after["error"]) == (stopped["status"], 1, stopped["error"])  # nothing started
    # the job now shows what the issue asks for: its clear fields and the sealed line naming the key
    assert after["sealed"] == f"sealed: the customer's key is not available (kms:{meta['Arn']}: the key is disabled)", after
    kms_client(kms, creds).enable_key(KeyId=meta["KeyId"])
    assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}, "state_key": creds}).status_code == 202
    assert c.get(f"/api/jobs/{job['id']}").json()["sealed"] is None  # the key works again
    assert c.post(f"/api/jobs/{job['id']}/cancel").status_code == 202  # (the service's test ends here)
    wait_status(c, job["id"], ("cancelled", "failed", "complete"))


def test_kms_out_of_reach_is_refused_with_its_own_line(
    certs: Certs, plugin_path: Path, chorus: ChorusSimulator, iam_kms: tuple[KmsServer, dict[str, str]], tmp_path: Path
) -> None:
    """The operator's KMS endpoint refuses connections, then accepts them and never answers: 503
    each time, and the service keeps answering its other requests meanwhile."""
    kms, creds = iam_kms
    port = free_port()
    gone = KmsServer(f"https://127.0.0.1:{port}", kms.ca_pem, kms.proc)
    server = start_server(
        certs,
        plugin_path,
        chorus,
        tmp_path / "service",
        "--rate-jobs",
        "1000/60",
        config_text=config_with_kms(gone, kms.ca_pem),
        env_extra={"PORTSHIFT_LOAD_PLUGINS": PLUGINS},
    )
    arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-1111-2222-3333-444444444444"
    try:
        line = assert_refused(server, arn, creds, 503, ": KMS could not be reached (")
        assert "the service could not reach KMS" in line and line.endswith("try again in a minute"), line

        with socket.socket() as silent:  # accepts (the kernel does), never answers
            silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            silent.bind(("127.0.0.1", port))
            silent.listen(16)
            got: dict[str, Any] = {}
            waiting = threading.Thread(target=lambda: got.update(r=submit(server, arn, creds, canary_value("silent"))))
            started = time.monotonic()
            waiting.start()
            time.sleep(1)
            other = server.client().get("/api/offers")  # the service answers meanwhile
            assert other.status_code == 200 and time.monotonic() - started < 5
            waiting.join(60)
            took = time.monotonic() - started
        r = got["r"]
        assert r.status_code == 503 and r.headers["Retry-After"] == "60", r.text
        assert r.json()["error"] == f"state_key: KMS did not answer within 10 s for the key kms:{arn}; try again in a minute"
        assert 9 < took < 20, took
        assert job_rows(server) == 0 and [p for p in (server.data_dir / "jobs").iterdir() if not p.name.startswith(".")] == []
    finally:
        server.stop()


def test_at_most_four_key_checks_wait_on_a_slow_kms(iam_kms: tuple[KmsServer, dict[str, str]]) -> None:
    """A KMS that never answers holds at most ``MAX_CHECKS`` threads: one more request is refused at
    once; when KMS goes away the round trips end, and the next check with a working KMS passes."""
    from portshift_server.key_check import MAX_CHECKS, KeyUnreachable, verify_key
    from portshift_server.state_keys import StateKeyOptions

    kms, creds = iam_kms
    key_creds = {f"key_{k}": v for k, v in creds.items()}
    arn = "kms:" + kms_client(kms, creds).create_key()["KeyMetadata"]["Arn"]
    lines: list[str] = []

    def check(options: StateKeyOptions) -> None:
        try:
            verify_key(options, arn, key_creds, timeout=3)
        except KeyUnreachable as e:
            lines.append(str(e))

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        options = StateKeyOptions(f"https://127.0.0.1:{silent.getsockname()[1]}", kms.ca_pem)
        waiting = [threading.Thread(target=check, args=(options,)) for _ in range(MAX_CHECKS)]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 10
        while sum(t.name == "key-check" for t in threading.enumerate()) < MAX_CHECKS:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(KeyUnreachable, match="^the service is checking too many customer keys at once; try again"):
            verify_key(options, arn, key_creds, timeout=3)
        assert time.monotonic() - started < 0.5
        for t in waiting:
            t.join(10)
        assert lines == [f"state_key: KMS did not answer within 3 s for the key {arn}; try again in a minute"] * MAX_CHECKS
    deadline = time.monotonic() + 60  # the listener is closed: the round trips end and free their places
    while any(t.name == "key-check" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    verify_key(StateKeyOptions(kms.url, kms.ca_pem), arn, key_creds)  # a working KMS: passes
    with pytest.raises(RequestError, match="KMS refused the credentials"):
        verify_key(StateKeyOptions(kms.url, kms.ca_pem), arn, {**key_creds, "key_secret_access_key": "wrong-secret"})
