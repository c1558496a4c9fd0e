"""A launcher that runs each service job as its own Kubernetes Job (one pod, one worker).

For one export it creates three objects in the workers' namespace, built here as plain dicts
(:func:`job_objects`):

- a **ConfigMap** with the job file (which never holds a credential);
- a **Job** with ``backoffLimit: 0`` (a service job is resumed by the service, not retried by
  Kubernetes), ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``, and a pod hardened like
  ``deploy/kubernetes/job.yaml``: non-root with a fixed uid, read-only root filesystem, all
  capabilities dropped, no privilege escalation, ``RuntimeDefault`` seccomp, no service-account
  token, a memory-backed ``/tmp`` as the only writable place;
- a **NetworkPolicy**: no ingress; egress to DNS, HTTPS and the state database only.

Credentials are never in a Secret, the pod spec, an environment variable or the job file. The
container is started with ``stdin: true, stdinOnce: true``: the worker hardens itself, prints the
ready line (:data:`READY`) and reads its credentials from standard input. The launcher follows the
pod's log until that line, then attaches to the container's stdin (the Kubernetes attach API),
writes the credential document once and disconnects; with ``stdinOnce`` the runtime closes stdin
for good at that moment, so a later attach gets nothing. Object names carry a keyed hash of the
job id, never the id itself.

The cluster is reached through :class:`Cluster`; ``kubernetes_cluster.KubeClientCluster``
implements it with the official ``kubernetes`` client (the ``kubernetes`` extra of
portshift-server), imported only when this launcher is used without a cluster of its own. That
adapter has not been run against a live cluster (docs/serve.md).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from portshift.state.pg_url import parse_url

from .launcher import JobSpec, zero

log = logging.getLogger("portshift.server.kubernetes")

#: what the hardened worker prints before it reads its credentials (the sandbox handover's line)
READY = "portshift-ready 1"
JOB_FILE_DIR = "/etc/portshift"
TMP = "/tmp"  # noqa: S108 - the pod's own memory-backed emptyDir, not a shared folder
UID = 10001

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    **{k: POD_SECURITY_CONTEXT[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup")},
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass
class KubernetesSettings:
    """Where and how the workers run. Holds no credential (the database password travels in the
    credential document, as ``{"state": {"password": ...}}``)."""

    image: str
    #: the service's PostgreSQL, without a password: ``postgresql://role@host:5432/db``
    state_url: str
    #: the database's address (CIDR) and port, the only non-HTTPS destination a worker may reach
    database_cidr: str
    #: ≥ 32 random bytes: object names are ``portshift-`` + HMAC-SHA-256(key, job id)[:20 hex]
    name_key: bytes
    namespace: str = "portshift"
    database_port: int = 5432
    service_account: str = "portshift-worker"
    #: addresses HTTPS may not reach (link-local: cloud metadata; add the API server's address)
    https_except: list[str] = field(default_factory=lambda: ["169.254.0.0/16"])
    active_deadline_seconds: int = 86400
    ttl_seconds_after_finished: int = 3600
    ready_timeout: float = 120.0
    cancel_grace: int = 15
    cpu: str = "1"
    memory: str = "512Mi"
    transfers: int = 4

    def __post_init__(self) -> None:
        if len(self.name_key) < 32:
            raise ValueError("name_key must be at least 32 bytes")
        parse_url(self.state_url)  # portshift's own rules: no password, no sslmode below verify-full ...


def object_name(settings: KubernetesSettings, job_id: str) -> str:
    """A DNS-label name that identifies the job to whoever holds the key, and to nobody else."""
    return "portshift-" + hmac.new(settings.name_key, job_id.encode(), hashlib.sha256).hexdigest()[:20]


def worker_argv(settings: KubernetesSettings, state_url: str | None = None) -> list[str]:
    """``python -m portshift.handover --stream``: the worker hardens itself, prints the ready line
    and only then reads its credentials (the same handover as the sandbox, over the attach stream).
    ``state_url``: the run's own URL (its per-run database role) when the service gives one."""
    run = ["run", "--config", f"{JOB_FILE_DIR}/job.toml", "--state", state_url or settings.state_url, "--secrets-from-stdin"]
    handover = ["python", "-m", "portshift.handover", "--stream", "--log-format", "json"]
    return [*handover, *run, "--no-progress", "--transfers", str(settings.transfers)]


def _run_url(spec: JobSpec) -> str | None:
    """The per-run state URL the service's PostgreSQL store gives a run (its own role), if any."""
    target = str(spec.state_file)
    return target if target.startswith(("postgresql://", "postgres://")) else None


def _key_ca(spec: JobSpec) -> dict[str, str]:
    """The operator's KMS CA (a public certificate) when the job is sealed with a customer's key."""
    from .state_keys import CA_NAME

    ca = spec.job_file.parent / CA_NAME
    return {CA_NAME: ca.read_text(encoding="utf-8")} if ca.is_file() else {}


def job_objects(spec: JobSpec, settings: KubernetesSettings) -> list[dict[str, Any]]:
    """The ConfigMap, Job and NetworkPolicy of one export (the Job is created first and owns the
    other two)."""
    name = object_name(settings, spec.job_id)
    labels = {
        "app.kubernetes.io/name": "portshift-worker",
        "app.kubernetes.io/managed-by": "portshift-server",
        "portshift/run": name,
    }
    meta = {"name": name, "namespace": settings.namespace, "labels": labels}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": copy.deepcopy(meta),
        "immutable": True,
        "data": {"job.toml": spec.job_file.read_text(encoding="utf-8"), **_key_ca(spec)},
    }
    container = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": worker_argv(settings, _run_url(spec))[:1],
        "args": worker_argv(settings, _run_url(spec))[1:],
        "workingDir": JOB_FILE_DIR,  # the job file names the operator's KMS CA beside it (state_keys.py)
        "stdin": True,
        "stdinOnce": True,
        "tty": False,
        "env": [
            {"name": k, "value": v}
            for k, v in (("HOME", TMP), ("TMPDIR", TMP), ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1"))
        ],
        "resources": {
            "requests": {"cpu": settings.cpu, "memory": settings.memory, "ephemeral-storage": "64Mi"},
            "limits": {"cpu": settings.cpu, "memory": settings.memory, "ephemeral-storage": "1Gi"},
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [{"name": "job-file", "mountPath": JOB_FILE_DIR, "readOnly": True}, {"name": "tmp", "mountPath": TMP}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "hostNetwork": False,
                    "hostPID": False,
                    "hostIPC": False,
                    "terminationGracePeriodSeconds": settings.cancel_grace,
                    "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
                    "containers": [container],
                    "volumes": [
                        {"name": "job-file", "configMap": {"name": name, "defaultMode": 0o444}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "podSelector": {"matchLabels": {"portshift/run": name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {
                    "to": [
                        {"ipBlock": {"cidr": "0.0.0.0/0", "except": [c for c in settings.https_except if ":" not in c]}},
                        {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"] + [c for c in settings.https_except if ":" in c]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },
                {
                    "to": [{"ipBlock": {"cidr": settings.database_cidr}}],
                    "ports": [{"protocol": "TCP", "port": settings.database_port}],
                },
            ],
        },
    }
    return [config_map, job, policy]


class Cluster(Protocol):
    """The few calls the launcher makes to the Kubernetes API."""

    def create(self, obj: dict[str, Any], owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create ``obj`` (owned by ``owner``, a created object, when given); the created object."""

    def pod_of(self, namespace: str, job_name: str) -> str | None:
        """The name of the Job's pod once it has one."""

    def follow_log(self, namespace: str, pod: str) -> Iterator[str]:
        """The container's output lines from its start, until it ends (blocks while it runs)."""

    def attach_stdin(self, namespace: str, pod: str, data: bytearray) -> None:
        """Attach to the container's stdin, write ``data``, close the session."""

    def exit_code(self, namespace: str, pod: str) -> int | None:
        """The container's exit code once it terminated, else None."""

    def delete_job(self, namespace: str, job_name: str, grace_seconds: int) -> None:
        """Delete the Job and its pod (SIGTERM, then SIGKILL after the grace period)."""


class KubernetesHandle:
    """A started export pod; the :class:`~portshift_server.launcher.Handle` of this launcher."""

    def __init__(self, cluster: Cluster, settings: KubernetesSettings, name: str, pod: str) -> None:
        self.cluster, self.settings, self.name, self.pod = cluster, settings, name, pod
        self._stopped: int | None = None
        self._code: int | None = None

    @property
    def pid(self) -> int | None:
        return None  # not a process of this machine

    def poll(self) -> int | None:
        if self._code is None:
            self._code = self.cluster.exit_code(self.settings.namespace, self.pod)
        if self._code is None and self._stopped is not None:
            return self._stopped  # deleted before it reported an exit code
        return self._code

    def cancel(self) -> None:
        self._stop(self.settings.cancel_grace, -15)

    def kill(self) -> None:
        self._stop(0, -9)

    def _stop(self, grace: int, code: int) -> None:
        if self.poll() is None:
            self.cluster.delete_job(self.settings.namespace, self.name, grace)
            self._stopped = code

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(1.0)
        return code


class HandoverFailed(Exception):
    """The worker never said it was ready for its credentials (one line, no secret)."""


class KubernetesLauncher:
    """One Kubernetes Job per export; credentials over the attach stream after the ready line."""

    def __init__(self, settings: KubernetesSettings, cluster: Cluster | None = None) -> None:
        self.settings = settings
        if cluster is None:
            from .kubernetes_cluster import KubeClientCluster

            cluster = KubeClientCluster()
        self.cluster = cluster

    def start(self, spec: JobSpec, secrets: bytearray) -> KubernetesHandle:
        try:
            return self._start(spec, secrets)
        finally:
            zero(secrets)

    def _start(self, spec: JobSpec, secrets: bytearray) -> KubernetesHandle:
        ns = self.settings.namespace
        config_map, job, policy = job_objects(spec, self.settings)
        name = job["metadata"]["name"]
        created = self.cluster.create(job)
        # Both owned by the Job: deleted with it when ttlSecondsAfterFinished removes it. The pod
        # cannot start its container before the job file's ConfigMap exists, and that is created
        # after the NetworkPolicy: the worker never runs without its egress policy in place.
        self.cluster.create(policy, owner=created)
        self.cluster.create(config_map, owner=created)
        deadline = time.monotonic() + self.settings.ready_timeout
        pod = self._wait_for_pod(name, deadline)
        ready = threading.Event()
        threading.Thread(target=self._relay, args=(spec.on_output, pod, ready), daemon=True, name=f"log-{name}").start()
        if not ready.wait(max(0.0, deadline - time.monotonic())):
            self.cluster.delete_job(ns, name, 0)
            raise HandoverFailed("the worker did not become ready for its credentials")
        try:
            self.cluster.attach_stdin(ns, pod, secrets)
        except BaseException:
            self.cluster.delete_job(ns, name, 0)  # a worker waiting for credentials it will never get
            raise
        return KubernetesHandle(self.cluster, self.settings, name, pod)

    def _wait_for_pod(self, name: str, deadline: float) -> str:
        while (pod := self.cluster.pod_of(self.settings.namespace, name)) is None:
            if time.monotonic() >= deadline:
                self.cluster.delete_job(self.settings.namespace, name, 0)
                raise HandoverFailed("the worker's pod was not scheduled in time")
            time.sleep(0.5)
        return pod

    def _relay(self, on_output: Callable[[str, str], None] | None, pod: str, ready: threading.Event) -> None:
        """Pass the worker's lines on; the first READY line sets ``ready`` (later ones are text)."""
        try:
            for line in self.cluster.follow_log(self.settings.namespace, pod):
                if not ready.is_set() and line.strip() == READY:
                    ready.set()
                    continue
                if on_output is not None:
                    try:
                        on_output("stdout", line)  # the pod log merges stdout and stderr
                    except Exception:  # noqa: BLE001 - a parsing bug must not stop the relay
                        log.debug("output handler failed", exc_info=True)
        except Exception as e:  # noqa: BLE001 - the API went away: the handle's poll reports the end
            log.warning("lost the log of pod %s (%s)", pod, type(e).__name__)
