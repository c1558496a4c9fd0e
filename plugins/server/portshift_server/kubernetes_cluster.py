"""The :class:`~portshift_server.kubernetes_launcher.Cluster` calls over the official
``kubernetes`` client, imported here only (the ``kubernetes`` extra of portshift-server).

NOT RUN against a live cluster: no cluster, kind or k3s can run where portshift is developed.
The calls follow the client's documented API (``create_namespaced_*``, ``read_namespaced_pod_log``
with ``follow``, ``connect_get_namespaced_pod_attach`` through ``kubernetes.stream``); see
docs/serve.md for what that leaves untested.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any


class KubeClientCluster:
    """In-cluster configuration when the service runs in a pod, else the user's kubeconfig. The
    service account needs, in the workers' namespace only: create/delete jobs, create configmaps
    and networkpolicies, get/list pods, get pods/log, create pods/attach."""

    def __init__(self) -> None:
        try:
            import kubernetes  # noqa: F401 - optional: only this launcher needs it
        except ImportError:
            raise RuntimeError(
                "the Kubernetes launcher needs the kubernetes client: install portshift-server with its kubernetes extra"
            ) from None
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.client = client
        self.core = client.CoreV1Api()
        self.batch = client.BatchV1Api()
        self.net = client.NetworkingV1Api()

    def create(self, obj: dict[str, Any], owner: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        if owner is not None:
            meta = owner["metadata"]
            obj["metadata"]["ownerReferences"] = [
                {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"]}
            ]
        ns = obj["metadata"]["namespace"]
        create = {
            "Job": self.batch.create_namespaced_job,
            "ConfigMap": self.core.create_namespaced_config_map,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
        }[obj["kind"]]
        created = create(ns, obj)
        out = self.client.ApiClient().sanitize_for_serialization(created)
        out.setdefault("apiVersion", obj["apiVersion"])
        out.setdefault("kind", obj["kind"])
        return out

    def pod_of(self, namespace: str, job_name: str) -> str | None:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        running = [p for p in pods if p.status.phase in ("Running", "Succeeded", "Failed")]
        return running[0].metadata.name if running else None

    def follow_log(self, namespace: str, pod: str) -> Iterator[str]:
        stream = self.core.read_namespaced_pod_log(pod, namespace, container="worker", follow=True, _preload_content=False)
        try:
            for raw in stream.stream():
                yield from raw.decode("utf-8", "replace").splitlines()
        finally:
            stream.release_conn()

    def attach_stdin(self, namespace: str, pod: str, data: bytearray) -> None:
        from kubernetes.stream import stream

        ws = stream(
            self.core.connect_get_namespaced_pod_attach,
            pod,
            namespace,
            container="worker",
            stdin=True,
            stdout=False,
            stderr=False,
            tty=False,
            _preload_content=False,
        )
        try:
            ws.write_stdin(bytes(data))  # the client's API takes bytes: one short-lived copy
            ws.close_channel(0)  # end of input (protocol v5; a no-op before it)
        finally:
            ws.close()  # stdinOnce: the runtime closes the worker's stdin now, for good

    def exit_code(self, namespace: str, pod: str) -> int | None:
        try:
            status = self.core.read_namespaced_pod(pod, namespace).status
        except self.client.ApiException as e:
            if e.status == 404:
                return None
            raise
        for c in status.container_statuses or []:
            if c.name == "worker" and c.state.terminated is not None:
                return int(c.state.terminated.exit_code)
        return None

    def delete_job(self, namespace: str, job_name: str, grace_seconds: int) -> None:
        body = self.client.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=grace_seconds)
        try:
            self.batch.delete_namespaced_job(job_name, namespace, body=body)
        except self.client.ApiException as e:
            if e.status != 404:
                raise
