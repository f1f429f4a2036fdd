"""The Kubernetes API as the scratch environment, its janitor and the backup executor
(lifeboat/executor.py) use it: the client for the configured cluster, the handful of calls they
make with errors wrapped, and what they read of a pod's status. Everything goes through the
official ``kubernetes`` client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import kubernetes.client
import kubernetes.config
import structlog
from kubernetes.client.exceptions import ApiException

from drills.scratch.common import ScratchError
from drills.scratch.kubernetes.manifests import Manifest

log = structlog.get_logger(__name__)


class ClusterAccess(Protocol):
    """How to reach a cluster (scratch and executor settings both say it)."""

    @property
    def in_cluster(self) -> bool: ...
    @property
    def kubeconfig(self) -> Path | None: ...
    @property
    def context(self) -> str | None: ...


def make_api_client(settings: ClusterAccess) -> kubernetes.client.ApiClient:
    """The client for the configured cluster: in-cluster service account, or kubeconfig + context."""
    if settings.in_cluster:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)
    path = str(settings.kubeconfig) if settings.kubeconfig else None
    return kubernetes.config.new_client_from_config(config_file=path, context=settings.context)


def api_error(doing: str, exc: ApiException) -> ScratchError:
    """The ScratchError for an API call that failed while ``doing`` something."""
    return ScratchError(f"kubernetes: cannot {doing}: {exc.status} {exc.reason}")


@dataclass
class KubernetesApi:
    """The handful of calls the scratch environment and the janitor make, with errors wrapped."""

    client: kubernetes.client.ApiClient

    def __post_init__(self) -> None:
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.networking = kubernetes.client.NetworkingV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)

    def create(self, manifest: Manifest) -> None:
        """Create one object of the kinds manifests.py generates."""
        kind, namespace = manifest["kind"], manifest["metadata"].get("namespace")
        body: Any = manifest  # plain JSON: the client sends a dict as it is (tests validate it as the models)
        creators: dict[str, Callable[[], Any]] = {
            "Namespace": lambda: self.core.create_namespace(body=body),
            "ResourceQuota": lambda: self.core.create_namespaced_resource_quota(namespace, body=body),
            "LimitRange": lambda: self.core.create_namespaced_limit_range(namespace, body=body),
            "NetworkPolicy": lambda: self.networking.create_namespaced_network_policy(namespace, body=body),
            "Service": lambda: self.core.create_namespaced_service(namespace, body=body),
            "StatefulSet": lambda: self.apps.create_namespaced_stateful_set(namespace, body=body),
            "Secret": lambda: self.core.create_namespaced_secret(namespace, body=body),
            "ConfigMap": lambda: self.core.create_namespaced_config_map(namespace, body=body),
            "Job": lambda: self.batch.create_namespaced_job(namespace, body=body),
        }
        try:
            creators[kind]()
        except ApiException as exc:
            raise api_error(f"create {kind} {manifest['metadata']['name']}", exc) from exc
        log.info("kubernetes.created", kind=kind, namespace=namespace, name=manifest["metadata"]["name"])


def absent(call: Callable[[], Any]) -> bool:
    """Run a delete or read; True when the object is not there (404)."""
    try:
        call()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def pod_ready(pod: Any) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(condition.type == "Ready" and condition.status == "True" for condition in conditions)


def job_finished(job: Any) -> tuple[str, str, str] | None:
    """(Complete or Failed, reason, message) once ``job`` has finished; None while it runs."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return condition.type, condition.reason or condition.type, condition.message or "no message"
    return None


def container_state(pod: Any, container: str) -> Any:
    """The current state (``waiting``, ``running`` or ``terminated``) of ``container`` in ``pod``, or None."""
    for status in (pod.status.container_statuses if pod is not None and pod.status else None) or []:
        if status.name == container:
            return status.state
    return None


def failed_init_containers(pod: Any) -> list[tuple[str, str]]:
    """(name, what happened) of each init container of ``pod`` that exited non-zero, now or last time."""
    failed = []
    for status in (pod.status.init_container_statuses if pod.status else None) or []:
        for state in (status.state, status.last_state):
            terminated = state.terminated if state else None
            if terminated is not None and terminated.exit_code:
                reason = terminated.reason or "terminated"
                failed.append((status.name, f"{reason}, exit code {terminated.exit_code}, restarts {status.restart_count}"))
                break
    return failed
