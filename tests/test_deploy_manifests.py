"""The manifests in deploy/: valid for the engines that run them, hardened, and free of secrets.

- Every Kubernetes object is validated offline, in strict mode (an unknown field is an error),
  against the schemas that ``kubernetes-validate`` ships, for the oldest Kubernetes release the
  Job needs (1.31: ``podFailurePolicy`` became stable) and the newest one it knows.
- The AWS Batch documents are validated against the Batch API's own input shapes, as botocore
  ships them (the same check the AWS CLI does before sending).
- Each check has a control: a misspelt field is refused, so a check that passes means something.

Nothing here reaches a cluster or AWS: that the objects *run* is not tested (docs/scaling.md).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate
import kubernetes_validate
import pytest
import yaml

from portshift import plugins
from portshift.config import load_job
from portshift.plugins import load_plugins
from portshift.state.pg_url import parse_url

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBE = DEPLOY / "kubernetes"
BATCH = DEPLOY / "aws-batch"
OLDEST, NEWEST = "1.31", kubernetes_validate.utils.latest_version()
UID = 10001
CREDENTIALS_MOUNT = "/run/secrets/portshift"
JOBS = [KUBE / "job.yaml", KUBE / "csi" / "job.yaml"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KUBE.rglob("*.yaml")):
        for doc in documents(path):
            out.append((f"{path.relative_to(KUBE)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    kinds = sorted(doc["kind"] for _, doc in out)
    assert kinds == ["ConfigMap", "Job", "Job", "Namespace", "NetworkPolicy", "SecretProviderClass", "ServiceAccount"]
    return out


def core_objects() -> list[tuple[str, dict[str, Any]]]:
    """The objects of Kubernetes' own API (custom resources have no schema in the bundle)."""
    return [(name, doc) for name, doc in kube_objects() if ".x-k8s.io/" not in doc["apiVersion"]]


def assert_state_url(text: str) -> None:
    """A PostgreSQL URL that portshift itself accepts: a user, no password, nothing it refuses."""
    url = urllib.parse.urlsplit(text)
    assert url.scheme == "postgresql" and url.username and url.password is None
    parse_url(text)


def job(path: Path) -> dict[str, Any]:
    (found,) = [d for d in documents(path) if d["kind"] == "Job"]
    return found


def the_one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for _, d in docs if d["kind"] == kind]
    return found


# --- Kubernetes: the schema ------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize(("name", "doc"), core_objects(), ids=[n for n, _ in core_objects()])
def test_every_kubernetes_object_is_valid_against_the_schema(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_or_misplaced_field() -> None:
    """The control: strict validation is on, and it reaches into the pod template."""
    bad = job(KUBE / "job.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(bad, NEWEST, strict=True)
    bad = job(KUBE / "job.yaml")
    bad["spec"]["backoffLimit"] = "8"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, NEWEST, strict=True)


def test_the_bundled_schemas_are_read_from_the_package_not_the_network() -> None:
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{NEWEST}-local-strict"
    assert (schemas / "job-batch-v1.json").is_file()
    assert (schemas / "networkpolicy-networking-v1.json").is_file()


# --- Kubernetes: the Job ---------------------------------------------------------------------


@pytest.mark.parametrize("path", JOBS, ids=lambda p: str(p.relative_to(KUBE)))
def test_the_job_runs_n_workers_each_of_which_must_finish(path: Path) -> None:
    spec = job(path)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= spec["parallelism"]
    assert 0 < spec["activeDeadlineSeconds"] <= 7 * 86400
    assert 0 < spec["ttlSecondsAfterFinished"] <= 7 * 86400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a dead worker is a new pod, counted by backoffLimit
    # a wrong job file (2): retrying cannot help; anything else (5: something unreachable) may pass
    (fail_job,) = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [2]}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: str(p.relative_to(KUBE)))
def test_the_job_pod_is_hardened(path: Path) -> None:
    pod = job(path)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert "initContainers" not in pod and "ephemeralContainers" not in pod
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # every mount is read-only except /tmp, a memory-backed emptyDir with a size limit
    assert {p for p, m in mounts.items() if not m.get("readOnly")} == {"/tmp"}
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["sizeLimit"]
    # the volume types Pod Security Admission's `restricted` profile allows (no hostPath ...)
    restricted = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    assert {k for v in pod["volumes"] for k in v if k != "name"} <= restricted
    assert not [c for c in pod["containers"] if c.get("ports")]
    credentials = volumes[mounts[CREDENTIALS_MOUNT]["name"]]
    assert "secret" in credentials or credentials["csi"]["driver"] == "secrets-store.csi.k8s.io"
    if "secret" in credentials:
        assert credentials["secret"]["defaultMode"] == 0o440  # the worker's group (fsGroup), nobody else
    assert volumes[mounts["/etc/portshift"]["name"]]["configMap"]["name"] == "portshift-job"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: str(p.relative_to(KUBE)))
def test_the_job_runs_the_worker_with_no_secret_on_its_command_line_or_in_its_environment(path: Path) -> None:
    (container,) = job(path)["spec"]["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert argv[:1] == ["portshift"] and "worker" in argv
    assert argv[argv.index("--config") + 1] == "/etc/portshift/job.toml"
    assert_state_url(argv[argv.index("--state") + 1])
    assert not [e for e in container["env"] if "valueFrom" in e or e["name"] in secret_variables()]
    assert "envFrom" not in container
    assert_the_real_cli_takes(argv)


def assert_the_real_cli_takes(argv: list[str]) -> None:
    """The arguments parse with portshift's own command line (options that exist, in place)."""
    from portshift.cli import get_cli

    group = get_cli()
    ctx = group.make_context("portshift", list(argv[1:]), resilient_parsing=False)
    name = ctx.protected_args[0] if ctx.protected_args else ctx.args[0]
    assert name == "worker"
    rest = (ctx.protected_args + ctx.args)[1:]
    group.commands["worker"].make_context("worker", rest, parent=ctx)


def test_the_csi_job_differs_from_the_secret_job_only_in_the_credentials_volume() -> None:
    a, b = job(KUBE / "job.yaml"), job(KUBE / "csi" / "job.yaml")
    va = {v["name"]: v for v in a["spec"]["template"]["spec"].pop("volumes")}
    vb = {v["name"]: v for v in b["spec"]["template"]["spec"].pop("volumes")}
    assert a == b
    assert {k: v for k, v in va.items() if k != "credentials"} == {k: v for k, v in vb.items() if k != "credentials"}
    assert va["credentials"] != vb["credentials"]


# --- Kubernetes: the namespace, the network policy, the job file ----------------------------


def test_the_namespace_enforces_the_restricted_pod_security_profile() -> None:
    ns = the_one(kube_objects(), "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    sa = the_one(kube_objects(), "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert job(KUBE / "job.yaml")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    for _, doc in kube_objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == ns["metadata"]["name"]


def test_the_network_policy_lets_workers_reach_dns_https_and_the_database_only() -> None:
    policy = the_one(kube_objects(), "NetworkPolicy")["spec"]
    pod_labels = job(KUBE / "job.yaml")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["ingress"] == []
    allowed = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 5432)}
    for rule in policy["egress"]:
        assert rule["to"], "a rule without `to` would allow every destination"
        ports = {p["port"] for p in rule["ports"]}
        if ports == {53}:  # DNS to the cluster's resolver only
            assert all("namespaceSelector" in t and "podSelector" in t for t in rule["to"])
        if ports == {5432}:  # the database: one address, not the internet
            assert [t["ipBlock"]["cidr"].endswith("/32") for t in rule["to"]] == [True]
    https = next(r for r in policy["egress"] if {p["port"] for p in r["ports"]} == {443})
    assert all("169.254.0.0/16" in t["ipBlock"]["except"] for t in https["to"] if "." in t["ipBlock"]["cidr"])


def credential_files(job_doc: dict[str, Any]) -> dict[str, str]:
    return {
        f"[{section}] {key}": value
        for section in ("source", "sink", "state")
        for key, value in job_doc.get(section, {}).items()
        if key.endswith("_file")
    }


def secret_variables() -> set[str]:
    """Every environment variable an installed plugin (or the state) reads a credential from."""
    load_plugins()
    names = {"PORTSHIFT_STATE_PASSWORD", "PORTSHIFT_SIGNING_KEY"}
    for registry in (plugins.sources(), plugins.sinks()):
        for cls in registry.classes.values():
            names |= {str(extra["env"]) for extra in cls.Options.secret_fields().values()}
    assert {"PORTSHIFT_CHORUS_TOKEN", "PORTSHIFT_AWS_SECRET_ACCESS_KEY"} <= names
    return names


def load_with_dummy_files(doc: dict[str, Any], tmp_path: Path) -> None:
    """Load a deployed job file with the real plugins, its secret files replaced by dummies."""
    for section in ("source", "sink", "state"):
        for key, value in list(doc.get(section, {}).items()):
            if key.endswith("_file"):
                dummy = tmp_path / Path(value).name
                dummy.write_text("deploy-test-credential-0123456789\n")
                doc[section][key] = str(dummy)
    config = load_job(None, doc=doc)
    assert config.source_type == "chorus" and config.sink_type == "s3"


def test_the_job_file_in_the_config_map_loads_and_names_only_mounted_credential_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in secret_variables():
        monkeypatch.delenv(name, raising=False)
    doc = tomllib.loads(the_one(kube_objects(), "ConfigMap")["data"]["job.toml"])
    files = credential_files(doc)
    assert set(files) == {
        "[source] token_file",
        "[sink] access_key_id_file",
        "[sink] secret_access_key_file",
        "[state] password_file",
    }
    assert {str(Path(f).parent) for f in files.values()} == {CREDENTIALS_MOUNT}
    # the CSI driver mounts the same file names the job file reads
    spc = the_one(kube_objects(), "SecretProviderClass")
    assert spc["spec"]["provider"] == "aws"
    aliases = {o["objectAlias"] for o in yaml.safe_load(spc["spec"]["parameters"]["objects"])}
    assert aliases == {Path(f).name for f in files.values()}
    # a fixed window: workers starting at different times must plan the same job
    assert doc["job"]["since"] and doc["job"]["until"]
    load_with_dummy_files(doc, tmp_path)


# --- AWS Batch -------------------------------------------------------------------------------

BATCH_API = botocore.session.get_session().get_service_model("batch")
BATCH_DOCS = {"job-definition.json": "RegisterJobDefinition", "submit-job.json": "SubmitJob"}


@pytest.mark.parametrize(("name", "operation"), BATCH_DOCS.items())
def test_the_batch_documents_match_the_batch_api(name: str, operation: str) -> None:
    doc = json.loads((BATCH / name).read_text())
    botocore.validate.validate_parameters(doc, BATCH_API.operation_model(operation).input_shape)


def test_the_batch_check_refuses_a_misspelt_field() -> None:
    doc = json.loads((BATCH / "job-definition.json").read_text())
    doc["containerProperties"]["readOnlyRootFileSystem"] = True
    with pytest.raises(botocore.validate.ParamValidationError, match="readOnlyRootFileSystem"):
        botocore.validate.validate_parameters(doc, BATCH_API.operation_model("RegisterJobDefinition").input_shape)


def test_the_batch_array_job_runs_the_hardened_worker() -> None:
    definition = json.loads((BATCH / "job-definition.json").read_text())
    submit = json.loads((BATCH / "submit-job.json").read_text())
    assert 2 <= submit["arrayProperties"]["size"] <= 10_000
    assert submit["jobDefinition"] == definition["jobDefinitionName"]
    container = definition["containerProperties"]
    argv = container["command"]
    assert argv[:1] == ["portshift"] and "worker" in argv
    parameters = {**definition["parameters"], **submit.get("parameters", {})}
    for i, arg in enumerate(argv):  # every Ref:: has a value
        if arg.startswith("Ref::"):
            argv[i] = parameters[arg[len("Ref::") :]]
    assert argv[argv.index("--config") + 1] == "/etc/portshift/job.toml"
    assert_state_url(argv[argv.index("--state") + 1])
    assert_the_real_cli_takes(argv)
    assert container["user"] == str(UID)
    assert container["readonlyRootFilesystem"] is True and container["privileged"] is False
    assert container["linuxParameters"]["tmpfs"] == [
        {"containerPath": "/tmp", "size": 64, "mountOptions": ["rw", "nosuid", "nodev", "noexec"]}
    ]
    assert {"name": "core", "softLimit": 0, "hardLimit": 0} in container["ulimits"]
    assert "volumes" not in container and "mountPoints" not in container
    exits = {r.get("onExitCode"): r["action"] for r in definition["retryStrategy"]["evaluateOnExit"]}
    assert exits == {"2": "EXIT", None: "RETRY"} and definition["retryStrategy"]["attempts"] >= 2
    assert definition["timeout"]["attemptDurationSeconds"] > 0


def test_no_secret_in_the_batch_environment_only_references_to_the_secret_store() -> None:
    definition = json.loads((BATCH / "job-definition.json").read_text())
    container = definition["containerProperties"]
    secret_names = secret_variables()
    assert not [e["name"] for e in container["environment"] if e["name"] in secret_names]
    assert not [e for e in container["environment"] if re.search(r"TOKEN|SECRET|PASSWORD|KEY", e["name"])]
    assert {s["name"] for s in container["secrets"]} == {"PORTSHIFT_CHORUS_TOKEN", "PORTSHIFT_STATE_PASSWORD"}
    for s in container["secrets"]:
        assert re.fullmatch(r"arn:aws:(secretsmanager|ssm):[a-z0-9-]+:\d{12}:(secret:|parameter/)\S+", s["valueFrom"])
    submit = json.loads((BATCH / "submit-job.json").read_text())
    assert "containerOverrides" not in submit


def test_the_batch_job_file_loads_with_the_role_and_the_variables_the_definition_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in secret_variables():
        monkeypatch.delenv(name, raising=False)
    doc = tomllib.loads((BATCH / "job.toml").read_text())
    assert credential_files(doc) == {} and doc["sink"]["credential_chain"] is True
    definition = json.loads((BATCH / "job-definition.json").read_text())
    for s in definition["containerProperties"]["secrets"]:
        monkeypatch.setenv(s["name"], "deploy-test-credential-0123456789")
    load_with_dummy_files(doc, tmp_path)


# --- docs/scaling.md -------------------------------------------------------------------------

SCALING = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"


def test_the_scaling_doc_names_files_that_exist_and_documents_every_manifest() -> None:
    text = SCALING.read_text()
    named = set(re.findall(r"deploy/[\w./-]*\w", text))
    assert named and not [p for p in named if not (DEPLOY.parent / p).exists()]
    table = text.split("## Kubernetes", 1)[1].split("**Indexed", 1)[0]
    for path in KUBE.rglob("*.yaml"):
        assert f"`{path.relative_to(KUBE)}`" in table, f"{path.relative_to(KUBE)} is not in the docs' table"
    for path in BATCH.iterdir():
        assert f"`{path.name}`" in text


def test_the_scaling_doc_commands_use_the_names_the_manifests_use() -> None:
    text = SCALING.read_text()
    the_job = job(KUBE / "job.yaml")
    assert f"job/{the_job['metadata']['name']}" in text
    assert f"-n {the_job['metadata']['namespace']} " in text
    (volume,) = [v for v in the_job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert f"create secret generic {volume['secret']['secretName']}" in text
    doc = tomllib.loads(the_one(kube_objects(), "ConfigMap")["data"]["job.toml"])
    keys = set(re.findall(r"--from-file=([\w-]+)=", text))
    assert keys == {Path(f).name for f in credential_files(doc).values()}
