"""The Kubernetes launcher: the objects it creates for one export, and the order of its handover.

What is real here: the objects are validated offline against the Kubernetes schema (strict), the
job file and credential document come from the service's own request path (``build_job``), and
the hardening is compared field by field with ``deploy/kubernetes/job.yaml``.

What is not: no cluster runs here (no kind, k3s or kwok can be had on these machines). The
launcher's calls to the API go through its small ``Cluster`` interface; ``RecordingCluster``
below stands in for it, recording every object created and every byte written to the pod's stdin,
so that the tests can check what would reach the API server and when. The adapter over the real
``kubernetes`` client (``kubernetes_cluster.py``) is not exercised: docs/serve.md says so.
"""

from __future__ import annotations

import json
import queue
import re
import secrets as random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from portshift_server.job_request import build_job
from portshift_server.kubernetes_launcher import (
    READY,
    HandoverFailed,
    KubernetesLauncher,
    KubernetesSettings,
    job_objects,
    object_name,
)
from portshift_server.launcher import JobSpec
from portshift_server.offers import load_catalogue

from portshift import ConfigError

from .conftest import canary_value, find_canary

DEPLOY_JOB = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "job.yaml"
VERSIONS = ["1.31", kubernetes_validate.utils.latest_version()]


def settings(**overrides: Any) -> KubernetesSettings:
    base: dict[str, Any] = {
        "image": "registry.example.com/portshift:0.1.0",
        "state_url": "postgresql://portshift_job@db.example.internal:5432/portshift",
        "database_cidr": "10.20.30.40/32",
        "name_key": random.token_bytes(32),
        "ready_timeout": 5.0,
    }
    return KubernetesSettings(**{**base, **overrides})


class Export:
    """One export as the service builds it: a job id, its job file, and the credential document."""

    def __init__(self, tmp_path: Path) -> None:
        self.job_id = random.token_urlsafe(18)
        self.canaries = [canary_value(label) for label in ("token", "key-id", "secret-key", "db-password")]
        token, key_id, secret_key, db_password = self.canaries
        body = {
            "source": {"type": "chorus", "token": token},
            "sink": {
                "type": "s3",
                "bucket": "acme-calls",
                "region": "eu-west-1",
                "access_key_id": key_id,
                "secret_access_key": secret_key,
            },
            "since": "2025-01-01",
        }
        built = build_job(load_catalogue(None, None), body, self.job_id)
        doc = json.loads(bytes(built.secrets))
        doc["state"] = {"password": db_password}  # the per-job database role's password travels the same way
        self.credentials = bytearray(json.dumps(doc).encode())
        self.document = bytes(self.credentials)
        work = tmp_path / "work"
        work.mkdir(parents=True)
        (work / "job.toml").write_text(built.job_toml)
        self.lines: list[str] = []
        self.spec = JobSpec(
            self.job_id, work, work / "job.toml", work / "state.db", on_output=lambda _s, line: self.lines.append(line)
        )


class RecordingCluster:
    """Stands in for the Kubernetes API (see the module docstring): records what the launcher sends."""

    def __init__(self, log_lines: list[str], ready_after: float = 0.2) -> None:
        self.created: list[dict[str, Any]] = []
        self.owners: list[str | None] = []
        self.attached: list[tuple[float, bytes]] = []
        self.deleted: list[tuple[str, int]] = []
        self.ready_at: float | None = None
        self.code: int | None = None
        self._lines, self._ready_after = log_lines, ready_after
        self._more: queue.Queue[str | None] = queue.Queue()

    def create(self, obj: dict[str, Any], owner: dict[str, Any] | None = None) -> dict[str, Any]:
        self.created.append(json.loads(json.dumps(obj)))
        self.owners.append(None if owner is None else owner["metadata"]["name"])
        return {**obj, "metadata": {**obj["metadata"], "uid": "0f6e1d2c"}}

    def pod_of(self, namespace: str, job_name: str) -> str | None:
        return f"{job_name}-x7k2q" if self.created else None

    def follow_log(self, namespace: str, pod: str) -> Iterator[str]:
        for line in self._lines:
            if line == READY:
                time.sleep(self._ready_after)  # the worker hardens itself first
                self.ready_at = time.monotonic()
            yield line
        while (line := self._more.get()) is not None:
            yield line

    def say(self, line: str | None) -> None:
        self._more.put(line)

    def attach_stdin(self, namespace: str, pod: str, data: bytearray) -> None:
        self.attached.append((time.monotonic(), bytes(data)))

    def exit_code(self, namespace: str, pod: str) -> int | None:
        return self.code

    def delete_job(self, namespace: str, job_name: str, grace_seconds: int) -> None:
        self.deleted.append((job_name, grace_seconds))


def leaves(value: Any) -> bytes:
    """Every key and string of the objects, one per line: a credential inside any field is found
    as it would be stored (raw, or in whatever encoding the field's own text gives it)."""
    if isinstance(value, dict):
        return b"\n".join(str(k).encode() + b"\n" + leaves(v) for k, v in value.items())
    if isinstance(value, list):
        return b"\n".join(leaves(v) for v in value)
    return str(value).encode()


def objects_of(tmp_path: Path, **overrides: Any) -> tuple[Export, dict[str, dict[str, Any]]]:
    export = Export(tmp_path)
    return export, {o["kind"]: o for o in job_objects(export.spec, settings(**overrides))}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_objects_are_valid_against_the_kubernetes_schema(tmp_path: Path, version: str) -> None:
    _, objects = objects_of(tmp_path)
    assert sorted(objects) == ["ConfigMap", "Job", "NetworkPolicy"]
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_job_is_hardened_exactly_like_the_deploy_manifest(tmp_path: Path) -> None:
    _, objects = objects_of(tmp_path, active_deadline_seconds=7200, ttl_seconds_after_finished=600)
    spec = objects["Job"]["spec"]
    assert spec["backoffLimit"] == 0  # the service resumes a job; Kubernetes must not run it twice
    assert spec["activeDeadlineSeconds"] == 7200 and spec["ttlSecondsAfterFinished"] == 600
    assert "parallelism" not in spec and "completions" not in spec  # one pod
    pod = spec["template"]["spec"]
    deploy = yaml.safe_load(DEPLOY_JOB.read_text())["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["securityContext"] == deploy["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == deploy["containers"][0]["securityContext"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # credentials arrive on stdin, once: open until the first attach ends, then closed for good
    assert (container["stdin"], container["stdinOnce"], container["tty"]) == (True, True, False)
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert volumes[writable[0]["name"]] == {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    assert (
        set(volumes) == {"tmp", "job-file"}
        and volumes["job-file"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    )
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]


def test_the_network_policy_allows_dns_https_and_the_database_only(tmp_path: Path) -> None:
    _, objects = objects_of(tmp_path, https_except=["169.254.0.0/16", "10.96.0.1/32"])
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= objects["Job"]["spec"]["template"]["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == []
    by_port = {frozenset(p["port"] for p in rule["ports"]): rule["to"] for rule in policy["egress"]}
    assert set(by_port) == {frozenset({53}), frozenset({443}), frozenset({5432})}
    assert by_port[frozenset({5432})] == [{"ipBlock": {"cidr": "10.20.30.40/32"}}]
    assert by_port[frozenset({443})][0]["ipBlock"]["except"] == ["169.254.0.0/16", "10.96.0.1/32"]
    assert all("namespaceSelector" in t for t in by_port[frozenset({53})])


def test_the_job_id_is_in_no_object_only_a_keyed_hash_of_it(tmp_path: Path) -> None:
    export, objects = objects_of(tmp_path)
    dumped = json.dumps(list(objects.values()))
    assert export.job_id not in dumped and export.job_id[:6] not in dumped
    names = {o["metadata"]["name"] for o in objects.values()}
    (name,) = names
    assert re.fullmatch(r"portshift-[0-9a-f]{20}", name)  # a DNS label, 30 characters
    key = random.token_bytes(32)
    assert object_name(settings(name_key=key), export.job_id) == object_name(settings(name_key=key), export.job_id)
    assert object_name(settings(name_key=key), export.job_id) != object_name(settings(), export.job_id)


def test_credentials_reach_the_pod_only_through_its_stdin_after_the_ready_line(tmp_path: Path) -> None:
    export = Export(tmp_path)
    cluster = RecordingCluster(['{"level": "info", "msg": "starting"}', READY])
    handle = KubernetesLauncher(settings(), cluster).start(export.spec, export.credentials)
    assert export.credentials == bytearray(len(export.credentials))  # zeroed once handed over
    # nothing the API server stores holds a credential, in any encoding
    assert [o["kind"] for o in cluster.created] == ["Job", "NetworkPolicy", "ConfigMap"]  # the policy before the pod can run
    assert cluster.owners == [None, handle.name, handle.name]
    assert find_canary(leaves(cluster.created), export.canaries) == []
    planted = {"kind": "ConfigMap", "data": {"job.toml": export.document.decode()}}
    assert len(find_canary(leaves([planted]), export.canaries)) >= 4  # the control: the sweep finds a planted copy
    for obj in cluster.created:
        text = json.dumps(obj)
        assert obj["kind"] != "Secret" and "secretKeyRef" not in text and "envFrom" not in text
        assert '"secret":' not in text and '"projected":' not in text and '"csi":' not in text
    # the document went to the pod's stdin once, and only after the worker said it was ready
    assert len(cluster.attached) == 1
    at, data = cluster.attached[0]
    assert data == export.document
    assert cluster.ready_at is not None and at >= cluster.ready_at
    # the worker's other lines reach the service; the ready line is protocol, not output
    cluster.say('{"level": "warning", "msg": "slow"}')
    cluster.say(None)
    deadline = time.monotonic() + 5
    while len(export.lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert export.lines == ['{"level": "info", "msg": "starting"}', '{"level": "warning", "msg": "slow"}']


def test_a_worker_that_never_says_it_is_ready_gets_no_credentials(tmp_path: Path) -> None:
    export = Export(tmp_path)
    cluster = RecordingCluster(['{"level": "info", "msg": "starting"}', f"{READY} please"])
    started = time.monotonic()
    with pytest.raises(HandoverFailed, match="did not become ready"):
        KubernetesLauncher(settings(ready_timeout=1.0), cluster).start(export.spec, export.credentials)
    assert 1.0 <= time.monotonic() - started < 10.0
    assert cluster.attached == []
    assert cluster.deleted == [(cluster.created[0]["metadata"]["name"], 0)]
    assert export.credentials == bytearray(len(export.credentials))
    cluster.say(None)


def test_the_handle_reports_the_exit_code_and_stops_the_job(tmp_path: Path) -> None:
    export = Export(tmp_path)
    cluster = RecordingCluster([READY], ready_after=0.0)
    handle = KubernetesLauncher(settings(cancel_grace=20), cluster).start(export.spec, export.credentials)
    assert handle.pid is None and handle.poll() is None and handle.wait(timeout=0.1) is None
    handle.cancel()
    assert cluster.deleted == [(handle.name, 20)] and handle.poll() == -15
    export2 = Export(tmp_path / "b")
    cluster2 = RecordingCluster([READY], ready_after=0.0)
    handle2 = KubernetesLauncher(settings(), cluster2).start(export2.spec, export2.credentials)
    cluster2.code = 3
    assert handle2.wait(timeout=5) == 3
    handle2.kill()  # already ended: nothing to delete
    assert cluster2.deleted == []
    cluster.say(None)
    cluster2.say(None)


def test_settings_refuse_a_password_in_the_state_url_and_a_short_name_key() -> None:
    with pytest.raises(ConfigError, match="carries a password"):
        settings(state_url="postgresql://portshift:hunter2hunter2@db.example.internal/portshift")
    with pytest.raises(ConfigError, match="sslmode"):
        settings(state_url="postgresql://portshift@db.example.internal/portshift?sslmode=disable")
    with pytest.raises(ValueError, match="32 bytes"):
        settings(name_key=b"short")


def test_without_the_kubernetes_client_the_launcher_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # what an install without the extra looks like
    with pytest.raises(RuntimeError, match="install portshift-server with its kubernetes extra"):
        KubernetesLauncher(settings())


def test_the_client_is_imported_only_when_the_launcher_needs_it() -> None:
    code = "import sys, portshift_server.kubernetes_launcher; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_the_ready_line_is_the_one_the_handover_protocol_uses() -> None:
    """After the sandbox branch merges, both must print and expect the same line."""
    assert READY == "portshift-ready 1"


def test_a_job_sealed_with_a_customer_key_gets_the_operators_kms_ca_beside_its_job_file(tmp_path: Path) -> None:
    """The job file names the KMS CA relatively (state_keys.py); the pod runs in the job file's
    folder, where the ConfigMap puts the CA. The key's credentials are in no object."""
    pytest.importorskip("portshift_sink_s3", reason="the kms key provider comes with the S3 plugin")
    from portshift_server.kubernetes_launcher import JOB_FILE_DIR
    from portshift_server.state_keys import CA_NAME, place_ca

    ca = tmp_path / "operator-kms-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = tmp_path / "service.toml"
    config.write_text(f'[state_key]\nendpoint_url = "https://kms.internal.example"\nca_bundle = "{ca}"\n')
    catalogue = load_catalogue(config, None)
    secret = canary_value("kms-secret")
    body = {
        "source": {"type": "chorus", "token": canary_value("token")},
        "sink": {"type": "s3", "bucket": "acme-calls", "region": "eu-west-1", "access_key_id": "a", "secret_access_key": "b"},
        "state_key": {
            "key": "kms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": secret,
        },
    }
    built = build_job(catalogue, body, "name")
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.toml").write_text(built.job_toml)
    place_ca(catalogue.state_key, work)
    objects = {o["kind"]: o for o in job_objects(JobSpec("job", work, work / "job.toml", work / "state.db"), settings())}
    assert objects["ConfigMap"]["data"][CA_NAME] == ca.read_text()
    assert f'key_ca_bundle = "{CA_NAME}"' in objects["ConfigMap"]["data"]["job.toml"]
    [container] = objects["Job"]["spec"]["template"]["spec"]["containers"]
    assert container["workingDir"] == JOB_FILE_DIR
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {JOB_FILE_DIR}
    assert not find_canary(json.dumps(list(objects.values())).encode(), [secret])
