"""The ``kubernetes`` scratch environment (DESIGN section 5): one namespace per drill run, fenced by
a ResourceQuota, a LimitRange and a NetworkPolicy that lets nothing out but the namespace itself and
DNS; a StatefulSet + Service per restored copy; teardown deletes the namespace (foreground) and
waits until it is gone. Everything goes through the official ``kubernetes`` client.

Targets are reached by service DNS (``<svc>.<namespace>.svc``): Lifeboat must run inside the
cluster. ``access: port-forward`` is not implemented yet and is refused when a slot is made.
The ClickHouse and MinIO servers get a user and password made for the run, kept in a Secret of the
drill namespace (create-only RBAC: Lifeboat never reads it back, it keeps what it generated); the
restore, the verification and the faults reach the servers with them.
The etcd copy is restored inside the cluster by init containers (``lifeboat restore --to-file``, then
``etcdutl snapshot restore``); that path has never run against a real cluster.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import kubernetes.client
import kubernetes.config
import structlog
from clickhouse_driver import Client
from kubernetes.client.exceptions import ApiException

from backup.repository.manifest import SnapshotHeader
from backup.repository.s3store import make_client
from backup.sources.base import RestoreOptions
from backup.sources.etcd import EtcdEndpointTarget
from drills.scratch.base import Slot
from drills.scratch.common import (
    ScratchError,
    SqlClient,
    drop_largest_table,
    duplicate_one_row,
    overwrite_one_object,
    wipe_bucket,
)
from policies.model import KubernetesScratch

log = structlog.get_logger(__name__)
Manifest = dict[str, Any]
MANAGED_BY = "app.kubernetes.io/managed-by"
DRILL_LABEL = "lifeboat.io/drill"
EXPIRES_AT = "lifeboat.io/expires-at"
SLOT_LABEL = "lifeboat.io/slot"
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20
POLICY_CONFIGMAP = "lifeboat-policy"  # in the drill namespace: what the restore init container reads
CREDENTIALS_SECRET = "lifeboat-credentials"
SCRATCH_REGION = "us-east-1"  # MinIO's default; the scratch bucket is created in it


@dataclass(frozen=True)
class Credentials:
    """The user and password of one scratch server, made for this run."""

    user: str
    password: str


def minio_env(credentials: Credentials) -> dict[str, str]:
    return {"MINIO_ROOT_USER": credentials.user, "MINIO_ROOT_PASSWORD": credentials.password}


def clickhouse_env(credentials: Credentials) -> dict[str, str]:
    """The official image's entrypoint replaces the ``default`` user (which recent images only
    let in from localhost) with this one, reachable from the network and allowed to create databases."""
    return {
        "CLICKHOUSE_USER": credentials.user,
        "CLICKHOUSE_PASSWORD": credentials.password,
        "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "1",
    }


@dataclass(frozen=True)
class Server:
    """How one kind's scratch server runs: image key, ports, data path, command, and the
    environment its credentials become (None: the server takes no credentials)."""

    image: str
    port: int
    data_path: str
    command: list[str]
    ports: dict[str, int] = field(default_factory=dict)
    credentials_env: Callable[[Credentials], dict[str, str]] | None = None


def _servers(settings: KubernetesScratch) -> dict[str, Server]:
    images = settings.images
    return {
        "etcd": Server(
            images.etcd,
            2379,
            "/var/lib/etcd",
            [
                "etcd",
                "--name=drill",
                "--data-dir=/var/lib/etcd/data",
                "--listen-client-urls=http://0.0.0.0:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
            ],
            {"client": 2379},
        ),
        "clickhouse": Server(
            images.clickhouse, 9000, "/var/lib/clickhouse", [], {"native": 9000, "http": 8123}, clickhouse_env
        ),
        "s3": Server(images.minio, 9000, "/data", ["minio", "server", "/data"], {"s3": 9000}, minio_env),
    }


# ---- manifests (pure) --------------------------------------------------------------------------


def namespace_manifest(name: str, *, drill: str, expires_at: int) -> Manifest:
    """The drill namespace, labelled so that the janitor (and only it) finds it once expired."""
    labels = {MANAGED_BY: "lifeboat", DRILL_LABEL: drill, EXPIRES_AT: str(expires_at)}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def quota_manifest(namespace: str, settings: KubernetesScratch) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "lifeboat-drill", "namespace": namespace},
        "spec": {"hard": dict(settings.quota)},
    }


def limit_range_manifest(namespace: str, settings: KubernetesScratch) -> Manifest:
    limits = settings.limits
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "lifeboat-drill", "namespace": namespace},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": limits.default_cpu, "memory": limits.default_memory},
                    "defaultRequest": {"cpu": limits.default_request_cpu, "memory": limits.default_request_memory},
                }
            ]
        },
    }


def network_policy_manifest(namespace: str) -> Manifest:
    """Deny all egress but to pods of this namespace and DNS in kube-system: a scratch restore can
    never reach production. Ingress is left open (the drill runner reaches the targets)."""
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    kube_system = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "lifeboat-drill-egress", "namespace": namespace},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}]}, {"to": [kube_system], "ports": dns_ports}],
        },
    }


def secret_manifest(namespace: str, name: str, data: dict[str, str]) -> Manifest:
    """An Opaque Secret of the drill namespace (deleted with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "lifeboat"}},
        "type": "Opaque",
        "stringData": data,
    }


def service_manifest(namespace: str, name: str, server: Server) -> Manifest:
    ports = [{"name": port_name, "port": port, "targetPort": port} for port_name, port in server.ports.items()]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {SLOT_LABEL: name}},
        "spec": {"selector": {SLOT_LABEL: name}, "ports": ports},
    }


def statefulset_manifest(
    namespace: str,
    name: str,
    server: Server,
    settings: KubernetesScratch,
    *,
    init_containers: list[Manifest] | None = None,
    credentials_secret: str | None = None,
) -> Manifest:
    """One replica of ``server`` with its data on a PVC from the template ``data``, and its
    environment from ``credentials_secret`` when given."""
    container: Manifest = {
        "name": "server",
        "image": server.image,
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in server.ports.items()],
        "volumeMounts": [{"name": "data", "mountPath": server.data_path}],
        "readinessProbe": {"tcpSocket": {"port": server.port}, "periodSeconds": 2},
    }
    if server.command:
        container["command"] = server.command
    if credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": credentials_secret}}]
    pod_spec: Manifest = {"containers": [container], "automountServiceAccountToken": False}
    if init_containers:
        pod_spec["initContainers"] = init_containers
        pod_spec["volumes"] = [
            {"name": "restore", "emptyDir": {}},
            {"name": "policy", "configMap": {"name": POLICY_CONFIGMAP}},
            {"name": "credentials", "secret": {"secretName": CREDENTIALS_SECRET}},
        ]
    claim_spec: Manifest = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": settings.storage}}}
    if settings.storage_class:
        claim_spec["storageClassName"] = settings.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {SLOT_LABEL: name}},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": {SLOT_LABEL: name}},
            "template": {"metadata": {"labels": {SLOT_LABEL: name}}, "spec": pod_spec},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}],
        },
    }


def etcd_restore_init_containers(source: str, snapshot: str, settings: KubernetesScratch) -> list[Manifest]:
    """The in-cluster etcd restore: Lifeboat fetches and verifies the snapshot db from the repository
    (policy from the ConfigMap, credentials from the Secret), then ``etcdutl snapshot restore`` writes
    the data dir on the PVC unless a previous start of this pod already did (a kill-target restart)."""
    fetch = {
        "name": "fetch-snapshot",
        "image": settings.lifeboat_image,
        "command": ["lifeboat", "--config", "/etc/lifeboat/policy.yaml", "restore", source],
        "args": ["--snapshot", snapshot, "--to-file", "/restore/snapshot.db", "--yes"],
        "volumeMounts": [
            {"name": "restore", "mountPath": "/restore"},
            {"name": "policy", "mountPath": "/etc/lifeboat", "readOnly": True},
            {"name": "credentials", "mountPath": "/etc/lifeboat/secrets", "readOnly": True},
        ],
    }
    restore_script = (
        "test -d /var/lib/etcd/data/member || etcdutl snapshot restore /restore/snapshot.db "
        "--data-dir /var/lib/etcd/data --name drill --initial-cluster drill=http://127.0.0.1:2380 "
        "--initial-advertise-peer-urls http://127.0.0.1:2380"
    )
    restore = {
        "name": "etcd-snapshot-restore",
        "image": settings.images.etcd,
        "command": ["/bin/sh", "-c", restore_script],
        "volumeMounts": [{"name": "restore", "mountPath": "/restore"}, {"name": "data", "mountPath": "/var/lib/etcd"}],
    }
    return [fetch, restore]


def credentials_secret_name(kind: str) -> str:
    return f"lifeboat-scratch-{kind}"


# ---- the API -----------------------------------------------------------------------------------


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


def _api_error(doing: str, exc: ApiException) -> ScratchError:
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
        """Create one object of the kinds this module generates."""
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
        }
        try:
            creators[kind]()
        except ApiException as exc:
            raise _api_error(f"create {kind} {manifest['metadata']['name']}", exc) from exc
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


# ---- clients of the scratch servers -------------------------------------------------------------


def clickhouse_client(host: str, port: int, credentials: Credentials) -> SqlClient:
    return Client(
        host,
        port=port,
        user=credentials.user,
        password=credentials.password,
        connect_timeout=10,
        send_receive_timeout=120,
    )


def minio_client(endpoint: str, credentials: Credentials) -> Any:
    return make_client(
        endpoint_url=endpoint,
        region=SCRATCH_REGION,
        access_key_id=credentials.user,
        secret_access_key=credentials.password,
        addressing_style="path",
    )


@dataclass(frozen=True)
class TargetClients:
    """How the faults reach a slot's server: the same network path as the restore (service DNS)."""

    clickhouse: Callable[[str, int, Credentials], SqlClient] = clickhouse_client
    s3: Callable[[str, Credentials], Any] = minio_client


# ---- slots -------------------------------------------------------------------------------------

ETCD_NOT_WIRED = (
    "not implemented on kubernetes scratch: etcd is restored by the StatefulSet's init containers, and "
    "running them as the drill's timed restore (with the policy ConfigMap and credentials Secret they "
    "mount) is not wired yet"
)


class KubernetesSlot:
    """One restored copy: a StatefulSet ``<kind>-<n>`` + Service of the same name."""

    def __init__(
        self,
        env: KubernetesScratchEnvironment,
        *,
        kind: str,
        name: str,
        database: str,
        credentials: Credentials | None = None,
    ) -> None:
        self.env = env
        self.kind = kind
        self.name = name
        self.database = database  # ClickHouse database / S3 bucket the restore writes
        self.credentials = credentials
        self.host = f"{name}.{env.namespace}.svc"
        self.label = f"scratch {kind} {name} in namespace {env.namespace}"
        self._released = False

    @property
    def pod(self) -> str:
        return f"{self.name}-0"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:9000"

    def _credentials(self) -> Credentials:
        if self.credentials is None:
            raise ScratchError(f"{self.label} has no credentials")
        return self.credentials

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        if self.kind == "clickhouse":
            credentials = self._credentials()
            return RestoreOptions(
                to_host=self.host,
                to_port=9000,
                to_http_port=8123,
                to_database=self.database,
                to_user=credentials.user,
                to_password=credentials.password,
                yes=yes,
            )
        if self.kind == "s3":
            credentials = self._credentials()
            return RestoreOptions(
                to_endpoint=self.endpoint,
                to_bucket=self.database,
                to_access_key_id=credentials.user,
                to_secret_access_key=credentials.password,
                yes=yes,
            )
        raise ScratchError(f"restore into {self.label}: {ETCD_NOT_WIRED}")

    def after_restore(self) -> None:
        self.env.wait_ready(self.pod)

    def verify_target(self) -> Any:
        return EtcdEndpointTarget(f"http://{self.host}:2379") if self.kind == "etcd" else None

    def interrupt(self) -> str:
        try:
            self.env.api.core.delete_namespaced_pod(self.pod, self.env.namespace)
        except ApiException as exc:
            raise _api_error(f"delete pod {self.pod}", exc) from exc
        return f"deleted pod {self.pod} in namespace {self.env.namespace}"

    def stage_disaster(self) -> str:
        """ClickHouse: DROP the largest table; S3: delete every object. Raises ScratchError (etcd)."""
        if self.kind == "clickhouse":
            return drop_largest_table(self._sql(), self.database)
        if self.kind == "s3":
            return wipe_bucket(self._s3(), self.database)
        raise ScratchError(f"the disaster fault on {self.label}: {ETCD_NOT_WIRED}")

    def tamper(self) -> str:
        """ClickHouse: INSERT one duplicate row; S3: overwrite one object. Raises ScratchError (etcd)."""
        if self.kind == "clickhouse":
            return duplicate_one_row(self._sql(), self.database)
        if self.kind == "s3":
            return overwrite_one_object(self._s3(), self.database)
        raise ScratchError(f"the verifier-canary fault on {self.label}: {ETCD_NOT_WIRED}")

    def _sql(self) -> SqlClient:
        return self.env.clients.clickhouse(self.host, 9000, self._credentials())

    def _s3(self) -> Any:
        return self.env.clients.s3(self.endpoint, self._credentials())

    def release(self) -> None:
        """Delete this copy's StatefulSet, Service and PVC; the namespace's deletion catches the rest."""
        if self._released:
            return
        self._released = True
        namespace, core = self.env.namespace, self.env.api.core
        with contextlib.suppress(ApiException):
            absent(lambda: self.env.api.apps.delete_namespaced_stateful_set(self.name, namespace))
            absent(lambda: core.delete_namespaced_service(self.name, namespace))
            absent(lambda: core.delete_namespaced_persistent_volume_claim(f"data-{self.pod}", namespace))


# ---- the environment ---------------------------------------------------------------------------


class KubernetesScratchEnvironment:
    """Scratch targets in namespace ``<prefix><run id>`` of the configured cluster, for one drill run."""

    def __init__(
        self,
        settings: KubernetesScratch,
        run_id: str,
        *,
        drill: str | None = None,
        api_client: kubernetes.client.ApiClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        token: Callable[[int], str] = secrets.token_hex,
        clients: TargetClients | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.drill = drill or run_id  # a scratch made without a drill name (tests, tools) is labelled by run id
        self.namespace = f"{settings.namespace_prefix}{run_id.lower()}"
        self.api = KubernetesApi(api_client or make_api_client(settings))
        self.clock = clock
        self.sleep = sleep
        self.token = token
        self.clients = clients or TargetClients()
        self._servers = _servers(settings)
        self._slots: list[KubernetesSlot] = []
        self._credentials: dict[str, Credentials] = {}  # kind -> the credentials in its Secret
        self._provisioned = False

    def provision(self) -> None:
        """Create the namespace and its fences, once (on the first slot)."""
        if self._provisioned:
            return
        expires_at = int(self.clock() + self.settings.ttl.total_seconds())
        self._provisioned = True  # from here on teardown deletes the namespace
        self.api.create(namespace_manifest(self.namespace, drill=self.drill, expires_at=expires_at))
        self.api.create(quota_manifest(self.namespace, self.settings))
        self.api.create(limit_range_manifest(self.namespace, self.settings))
        self.api.create(network_policy_manifest(self.namespace))

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> Slot:
        """A new StatefulSet + Service for one restore of ``source``, ready (clickhouse, s3) or
        with its restore init containers (etcd: ready after the restore). Raises ScratchError."""
        if self.settings.access != "service-dns":
            raise ScratchError("scratch.kubernetes.access: port-forward is not implemented yet; use service-dns")
        if kind not in self._servers:
            raise ScratchError(f"no kubernetes scratch server for kind '{kind}'")
        self.provision()
        name = f"{kind}-{len(self._slots) + 1}"
        server = self._servers[kind]
        init = etcd_restore_init_containers(source, header.id, self.settings) if kind == "etcd" else None
        credentials = self.server_credentials(kind, server)
        made = KubernetesSlot(self, kind=kind, name=name, database="restored", credentials=credentials)
        self._slots.append(made)
        self.api.create(service_manifest(self.namespace, name, server))
        self.api.create(
            statefulset_manifest(
                self.namespace,
                name,
                server,
                self.settings,
                init_containers=init,
                credentials_secret=credentials_secret_name(kind) if credentials else None,
            )
        )
        if kind != "etcd":
            self.wait_ready(made.pod)
        return made

    def server_credentials(self, kind: str, server: Server) -> Credentials | None:
        """The credentials of this run's ``kind`` servers, made and put in their Secret on first use
        (every slot of a kind shares them); None for a server that takes none."""
        if server.credentials_env is None:
            return None
        if kind not in self._credentials:
            made = Credentials(user=f"lifeboat-{self.token(4)}", password=self.token(24))
            secret = secret_manifest(self.namespace, credentials_secret_name(kind), server.credentials_env(made))
            self.api.create(secret)
            self._credentials[kind] = made
        return self._credentials[kind]

    def wait_ready(self, pod: str) -> None:
        """Wait for ``pod``'s Ready condition; past ``ready_timeout`` raise ScratchError with its
        events and last log lines."""
        deadline = self.clock() + self.settings.ready_timeout.total_seconds()
        while True:
            try:
                if pod_ready(self.api.core.read_namespaced_pod(pod, self.namespace)):
                    log.info("kubernetes.pod_ready", namespace=self.namespace, pod=pod)
                    return
            except ApiException as exc:
                if exc.status != 404:  # not created yet by the StatefulSet controller: keep waiting
                    raise _api_error(f"read pod {pod}", exc) from exc
            if self.clock() >= deadline:
                raise ScratchError(self._not_ready_message(pod))
            self.sleep(POLL_SECONDS)

    def _not_ready_message(self, pod: str) -> str:
        timeout = int(self.settings.ready_timeout.total_seconds())
        lines = [f"pod {pod} in namespace {self.namespace} not ready after {timeout}s"]
        with contextlib.suppress(ApiException):
            events = self.api.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={pod}")
            lines += [f"event {event.type} {event.reason}: {event.message}" for event in events.items]
        with contextlib.suppress(ApiException):
            text = self.api.core.read_namespaced_pod_log(pod, self.namespace, tail_lines=LOG_TAIL_LINES)
            lines += [f"log: {line}" for line in str(text or "").splitlines()[-LOG_TAIL_LINES:]]
        return "\n".join(lines)

    def teardown(self) -> list[str]:
        """Release every slot, delete the namespace with foreground propagation and wait until it is
        gone (``teardown_timeout``); ScratchError if it is still there (the janitor retries)."""
        removed = []
        for made in reversed(self._slots):
            made.release()
            removed.append(made.label)
        self._slots.clear()
        if not self._provisioned:
            return removed
        self._provisioned = False
        core = self.api.core
        try:
            absent(lambda: core.delete_namespace(self.namespace, propagation_policy="Foreground"))
        except ApiException as exc:
            raise _api_error(f"delete namespace {self.namespace}", exc) from exc
        self._wait_gone()
        removed.append(f"namespace {self.namespace}")
        log.info("kubernetes.namespace_deleted", namespace=self.namespace)
        return removed

    def _wait_gone(self) -> None:
        deadline = self.clock() + self.settings.teardown_timeout.total_seconds()
        while not absent(lambda: self.api.core.read_namespace(self.namespace)):
            if self.clock() >= deadline:
                raise ScratchError(
                    f"namespace {self.namespace} still terminating after "
                    f"{int(self.settings.teardown_timeout.total_seconds())}s; the janitor removes it once expired"
                )
            self.sleep(POLL_SECONDS)
