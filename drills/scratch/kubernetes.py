"""The ``kubernetes`` scratch environment (DESIGN section 5): one namespace per drill run, fenced by
a ResourceQuota, a LimitRange and a NetworkPolicy that lets nothing out but the namespace itself and
DNS; a StatefulSet + Service per restored copy; teardown deletes the namespace (foreground) and
waits until it is gone. Everything goes through the official ``kubernetes`` client.

Reaching the targets (``access``): ``service-dns`` (``<svc>.<namespace>.svc``, Lifeboat runs inside
the cluster) or ``port-forward`` (Lifeboat outside the cluster): a ``PortForwardRelay`` per server
port listens on 127.0.0.1 and carries each connection over its own port-forward websocket of the
API server (``kubernetes.stream.portforward``) to the slot's pod; the slots then name 127.0.0.1 and
the relay's port. The restore, the verification and the faults all take the same path.
The ClickHouse and MinIO servers get a user and password made for the run, kept in a Secret of the
drill namespace (create-only RBAC: Lifeboat never reads it back, it keeps what it generated); the
restore, the verification and the faults reach the servers with them.

etcd is restored inside the cluster, by the StatefulSet pod's one init container in
``lifeboat_image``: ``lifeboat restore <source> --snapshot <id> --to-data-dir`` (policy from the
ConfigMap ``POLICY_CONFIGMAP``, repository secrets from the Secret ``CREDENTIALS_SECRET``, both
generated from the running policy into the drill namespace), Lifeboat's own data-dir restore
(backup/sources/etcd.py): it writes the snapshot db next to the data dir on the PVC, proves it (the
repository's sha256, then etcd's trailer) and runs ``etcdctl snapshot restore`` (3.4) or ``etcdutl``
(3.5+, detected) from the Lifeboat image, which therefore carries them (deploy/docker/Dockerfile); the
etcd image only runs ``etcd`` (the default one is distroless: no shell, nothing else is asked of it).
With ``--yes`` a data dir already there (a restarted pod) is moved aside on the PVC and restored
afresh, never reused nor refused; the PVC holds the snapshot and the restored copy at once, and every
such moved-aside copy. Then etcd starts on the restored data dir, as the init container's uid.
The drill's timed restore of such a slot is a dry run in this process (it proves the snapshot's
manifest is readable; its plan is a ``--to-file`` one: ``DRY_RUN_FILE``); ``after_restore`` creates
the StatefulSet and waits for readiness, so the in-cluster restore is inside the RTO. A failing
init container ends the wait at once with its exit code and last log lines.
Choices and limits of that path:
- the repository must be ``s3://``: a local-path repository cannot be read from a pod (refused);
- the generated pod policy holds the repository and the etcd sources' names only, every repository
  secret as a file of the Secret (never in the ConfigMap); the credentials are the policy's own;
- egress: a second NetworkPolicy lets the etcd restore pods (label ``RESTORE_LABEL``) reach the
  repository endpoint's addresses, as resolved by Lifeboat when the namespace is provisioned, on
  its TCP port only; an endpoint whose addresses rotate (AWS S3) may be resolved differently in the
  pod and is then blocked: the restore fails closed, with its log in the drill report;
- one copy per etcd source and drill run: the fault scenarios that need a fresh copy restored
  through this process's store reads (corrupt-chunk, missing-chunk, flaky-storage) or timed by its
  progress (kill-target) cannot reach an init container; their slot is refused ("could not
  verify"), so they are ERROR, never PASS. disaster deletes the StatefulSet, its pod and PVC (the
  data dir) and recovers by recreating it; verifier-canary deletes one key through the endpoint.
None of this has run against a real cluster: tests drive the real client against tests/k8s_fake.py.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

import kubernetes.client
import kubernetes.config
import structlog
import yaml
from clickhouse_driver import Client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from backup.repository.manifest import SnapshotHeader
from backup.repository.s3store import make_client
from backup.sources.base import RestoreOptions
from backup.sources.etcd import EtcdEndpointTarget
from drills.scratch.base import Slot
from drills.scratch.common import (
    ScratchError,
    SqlClient,
    delete_first_etcd_key,
    drop_largest_table,
    duplicate_one_row,
    overwrite_one_object,
    wipe_bucket,
)
from policies.model import KubernetesScratch, Policy, reveal

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
RESTORE_LABEL = "lifeboat.io/restores-from"  # pods that may reach the repository endpoint
CONFIG_DIR = PurePosixPath("/etc/lifeboat")  # as the backup Jobs of lifeboat/executor.py mount it
SECRETS_DIR = CONFIG_DIR / "secrets"
POLICY_KEY = "policy.yaml"
LIFEBOAT_UID = 10001  # the image's `lifeboat` user (deploy/docker/Dockerfile)
RESTORE_CONTAINER = "etcd-restore"  # the init container of an etcd copy
# The etcd slot's restore in this process is a --to-file dry run: a --to-data-dir one would look at
# ETCD_DATA on this machine, not in the pod (and fail where /var/lib/etcd is a 0700 etcd host's).
DRY_RUN_FILE = "/restore/snapshot.db"
ETCD_VOLUME = "/var/lib/etcd"  # where the etcd pod mounts its PVC
ETCD_DATA = f"{ETCD_VOLUME}/data"  # the data dir on it: restored by the init container, served by etcd
ETCD_MEMBER = "drill"  # the one member of a scratch etcd: restored under this name, etcd runs with it
ETCD_PEER_URL = "http://127.0.0.1:2380"  # its peer URL in the restored membership (etcd reads it from the data dir)
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
            ETCD_VOLUME,
            [
                "etcd",
                f"--name={ETCD_MEMBER}",
                f"--data-dir={ETCD_DATA}",
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


def repository_egress_manifest(namespace: str, addresses: list[str], port: int) -> Manifest:
    """Let the pods that restore from the repository (label ``RESTORE_LABEL``) reach its endpoint:
    those ``addresses`` (one /32 or /128 each) on TCP ``port``, nothing else. NetworkPolicies add up,
    so these pods keep the namespace and DNS of ``network_policy_manifest`` as well."""
    blocks = [{"ipBlock": {"cidr": f"{address}/{128 if ':' in address else 32}"}} for address in addresses]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "lifeboat-drill-repository-egress", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {RESTORE_LABEL: "repository"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": blocks, "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }


def secret_manifest(
    namespace: str, name: str, data: dict[str, str] | None = None, *, files: dict[str, bytes] | None = None
) -> Manifest:
    """An Opaque Secret of the drill namespace (deleted with it): text values (``data``), or files of
    any bytes (``files``, e.g. a key file)."""
    if files is not None:
        content: Manifest = {"data": {key: base64.b64encode(value).decode() for key, value in files.items()}}
    else:
        content = {"stringData": data or {}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "lifeboat"}},
        "type": "Opaque",
        **content,
    }


def config_map_manifest(namespace: str, name: str, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "lifeboat"}},
        "data": data,
    }


def service_manifest(namespace: str, name: str, server: Server) -> Manifest:
    ports = [{"name": port_name, "port": port, "targetPort": port} for port_name, port in server.ports.items()]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {SLOT_LABEL: name}},
        "spec": {"selector": {SLOT_LABEL: name}, "ports": ports},
    }


def run_as_lifeboat() -> Manifest:
    """The restricted container securityContext of the etcd restore and of the etcd it restored: the
    Lifeboat image's uid and gid, no privilege escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": LIFEBOAT_UID,
        "runAsGroup": LIFEBOAT_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def statefulset_manifest(
    namespace: str,
    name: str,
    server: Server,
    settings: KubernetesScratch,
    *,
    init_containers: list[Manifest] | None = None,
    credentials_secret: str | None = None,
    secret_keys: list[str] | None = None,
) -> Manifest:
    """One replica of ``server`` with its data on a PVC from the template ``data``, and its
    environment from ``credentials_secret`` when given. With ``init_containers`` (the etcd restore)
    the pod also gets their volumes: ``policy`` (the policy ConfigMap) and ``credentials``
    (``secret_keys`` of the repository credentials Secret, mode 0440, read through the pod's
    fsGroup), the label that opens egress to the repository, and the server runs as the restore's
    uid (``run_as_lifeboat``)."""
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
    pod_labels = {SLOT_LABEL: name}
    if init_containers:
        pod_spec["initContainers"] = init_containers
        # fsGroup: the kubelet makes the PVC's root group LIFEBOAT_UID and group-writable, so that the
        # init container (not root) can create the data dir's sibling work dir in it and rename it into
        # place, and the Secret's 0440 files are readable through the group.
        pod_spec["securityContext"] = {"fsGroup": LIFEBOAT_UID}
        # Not enough for etcd: snapshot restore writes the data dir 0700 and its files 0600, owned by
        # LIFEBOAT_UID, so the group gives another uid nothing. The default etcd image would run as root
        # and read them anyway, but another image's own user (bitnami's 1001, say) could not: etcd runs
        # as the uid that wrote its data dir, whatever the image's default.
        container["securityContext"] = run_as_lifeboat()
        items = [{"key": key, "path": key} for key in secret_keys or []]
        pod_spec["volumes"] = [
            {"name": "policy", "configMap": {"name": POLICY_CONFIGMAP, "items": [{"key": POLICY_KEY, "path": POLICY_KEY}]}},
            {"name": "credentials", "secret": {"secretName": CREDENTIALS_SECRET, "defaultMode": 0o440, "items": items}},
        ]
        pod_labels[RESTORE_LABEL] = "repository"
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
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}],
        },
    }


def etcd_restore_init_containers(source: str, snapshot: str, settings: KubernetesScratch) -> list[Manifest]:
    """The in-cluster etcd restore of ``snapshot`` of ``source``: one init container in
    ``settings.lifeboat_image`` running ``lifeboat restore --to-data-dir`` onto the data PVC (policy
    from the ConfigMap, secrets from the Secret, mounted under /etc/lifeboat as the backup Jobs mount
    them). Lifeboat writes and proves the snapshot db (repository sha256, etcd's trailer), runs
    ``etcdctl`` (3.4) or ``etcdutl`` (3.5+) ``snapshot restore`` into a work dir beside the data dir
    and renames it into place; ``--yes`` moves a data dir already there (a restarted pod: init
    containers run on every start) aside on the PVC, so each start restores the snapshot afresh.
    No shell and nothing of the etcd image is used. Returns the pod's ``initContainers``."""
    argv = [
        *("lifeboat", "--config", str(CONFIG_DIR / POLICY_KEY), "restore", source),
        *("--snapshot", snapshot),
        *("--to-data-dir", ETCD_DATA),
        *("--name", ETCD_MEMBER),
        *("--initial-cluster", f"{ETCD_MEMBER}={ETCD_PEER_URL}"),
        *("--initial-advertise-peer-urls", ETCD_PEER_URL),
        "--yes",
    ]
    restore = {
        "name": RESTORE_CONTAINER,
        "image": settings.lifeboat_image,
        "command": argv[:5],
        "args": argv[5:],
        "securityContext": run_as_lifeboat(),
        "volumeMounts": [
            {"name": "data", "mountPath": ETCD_VOLUME},  # the data dir's parent: the work dir goes beside it
            {"name": "policy", "mountPath": str(CONFIG_DIR / POLICY_KEY), "subPath": POLICY_KEY, "readOnly": True},
            {"name": "credentials", "mountPath": str(SECRETS_DIR), "readOnly": True},
        ],
    }
    return [restore]


@dataclass(frozen=True)
class RestoreFeed:
    """What the etcd restore init container is given: the policy file (ConfigMap), the secret files
    it names (Secret), and the repository endpoint they must reach (host, TCP port)."""

    policy_yaml: str
    secret_files: dict[str, bytes]
    endpoint: tuple[str, int]


def restore_feed(policy: Policy) -> RestoreFeed:
    """The pod's policy: ``policy``'s repository, every secret of it as a file under /etc/lifeboat/secrets,
    and the etcd sources by name (``restore --to-data-dir`` needs nothing else of them: it reaches no
    etcd, and takes the etcdctl on the image's PATH). ``state`` stays the image's default: restore
    records nothing in the state DB. Raises ScratchError for a repository a pod cannot read (not ``s3://``)."""
    repository = policy.repository
    scheme = urlparse(repository.url).scheme
    if scheme != "s3":
        raise ScratchError(
            f"an etcd copy on kubernetes scratch is restored inside the cluster, which cannot read the "
            f"{scheme} repository {repository.url}: use an s3:// repository reachable from the "
            "cluster, or scratch.kind: local"
        )
    files: dict[str, bytes] = {}
    dumped: dict[str, Any] = repository.model_dump(mode="json", exclude_none=True, exclude={"encryption"})
    for name in ("access_key_id", "secret_access_key"):
        value = reveal(getattr(repository.s3, name))
        if value is not None:
            key = f"repository-{name.replace('_', '-')}"
            files[key] = value.encode()
            dumped["s3"][name] = {"file": str(SECRETS_DIR / key)}
    if repository.encryption is not None:
        try:
            files["repository.key"] = repository.encryption.key_file.read_bytes()
        except OSError as exc:
            raise ScratchError(f"cannot read repository.encryption.key_file for the restore pod: {exc}") from exc
        dumped["encryption"] = {"key_file": str(SECRETS_DIR / "repository.key")}
    etcd = {
        name: {"kind": "etcd", "endpoints": ["http://127.0.0.1:2379"]}
        for name, settings in policy.sources.items()
        if settings.kind == "etcd"
    }
    document = {"repository": dumped, "sources": etcd}
    text = "# made by a Lifeboat drill for its etcd restore init container\n" + yaml.safe_dump(document, sort_keys=False)
    return RestoreFeed(text, files, _endpoint(repository.s3.endpoint_url, repository.s3.region))


def _endpoint(url: str | None, region: str) -> tuple[str, int]:
    parsed = urlparse(url or f"https://s3.{region}.amazonaws.com")
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def resolve_addresses(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to here, sorted."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


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
            "ConfigMap": lambda: self.core.create_namespaced_config_map(namespace, body=body),
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


# ---- port-forward ------------------------------------------------------------------------------

BUFFER = 256 * 1024


class StreamSocket(Protocol):
    """The part of a socket a relay uses (``PortForward.socket`` returns a wrapped socketpair end)."""

    def recv(self, size: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


StreamOpener = Callable[[], tuple[StreamSocket, Callable[[], None]]]


def pod_port_opener(api: KubernetesApi, namespace: str, pod: str, port: int) -> StreamOpener:
    """Opens a new port-forward websocket to ``pod``:``port``: (its socket, what closes it).
    Raises ApiException when the API server refuses (pod gone, RBAC)."""

    def open_stream() -> tuple[StreamSocket, Callable[[], None]]:
        forward = portforward(api.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port), forward.close

    return open_stream


class PortForwardRelay:
    """Listens on 127.0.0.1:<free port>; each connection accepted gets its own stream from ``open_stream``
    (a port-forward to the pod) and bytes are pumped both ways until either side closes."""

    def __init__(self, open_stream: StreamOpener, *, label: str) -> None:
        self.open_stream = open_stream
        self.label = label
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[Callable[[], None]] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"port-forward-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream, close_upstream = self.open_stream()
        except Exception as exc:  # noqa: BLE001 - the client sees a closed connection; the reason is logged
            log.warning("kubernetes.port_forward_failed", target=self.label, error=f"{type(exc).__name__}: {exc}")
            client.close()
            return

        def close_both() -> None:
            with contextlib.suppress(OSError):
                client.close()
            with contextlib.suppress(OSError):
                close_upstream()

        with self._lock:
            if self._closed:
                close_both()
                return
            self._open.add(close_both)
        reply = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        reply.start()
        _pump(client, upstream)
        reply.join()
        with self._lock:
            self._open.discard(close_both)
        close_both()

    def close(self) -> None:
        """Stop listening and close every relayed connection; safe to call twice."""
        with self._lock:
            self._closed = True
            closers = list(self._open)
            self._open.clear()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it; close() alone does not
        self._listener.close()
        for close_both in closers:
            close_both()


def _pump(source: Any, sink: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        while data := source.recv(BUFFER):
            sink.sendall(data)
    with contextlib.suppress(OSError, ValueError):
        sink.shutdown(socket.SHUT_WR)


# ---- etcd through its endpoint ------------------------------------------------------------------


# ---- slots -------------------------------------------------------------------------------------

ETCD_FRESH_COPY = (
    "could not verify: this scenario needs a fresh etcd copy restored through Lifeboat's own store reads "
    "(corrupt-chunk, missing-chunk, flaky-storage) or timed by their progress (kill-target); on kubernetes "
    "scratch etcd is restored by the copy's init container, out of their reach"
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
        statefulset: Manifest | None = None,
    ) -> None:
        self.env = env
        self.kind = kind
        self.name = name
        self.database = database  # ClickHouse database / S3 bucket the restore writes
        self.credentials = credentials
        self.statefulset = statefulset  # etcd: created by after_restore (the restore runs in its init container)
        self.host = f"{name}.{env.namespace}.svc"
        self.label = f"scratch {kind} {name} in namespace {env.namespace}"
        self._statefulset_created = statefulset is None
        self.relays: dict[int, PortForwardRelay] = {}
        if env.settings.access == "port-forward":
            for port in env.server(kind).ports.values():
                opener = pod_port_opener(env.api, env.namespace, self.pod, port)
                self.relays[port] = PortForwardRelay(opener, label=f"{env.namespace}/{self.pod}:{port}")
        self._released = False

    @property
    def pod(self) -> str:
        return f"{self.name}-0"

    def address(self, port: int) -> tuple[str, int]:
        """Where this process reaches the pod's ``port``: the service, or the local end of its port-forward."""
        relay = self.relays.get(port)
        return ("127.0.0.1", relay.port) if relay else (self.host, port)

    @property
    def endpoint(self) -> str:
        host, port = self.address(9000)
        return f"http://{host}:{port}"

    def _credentials(self) -> Credentials:
        if self.credentials is None:
            raise ScratchError(f"{self.label} has no credentials")
        return self.credentials

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """ClickHouse and S3: the service (or port-forward) and the run's credentials. etcd: a dry run
        (``DRY_RUN_FILE``) that proves the snapshot's manifest readable; the init container restores
        it, in ``after_restore``."""
        if self.kind == "clickhouse":
            credentials = self._credentials()
            host, port = self.address(9000)
            return RestoreOptions(
                to_host=host,
                to_port=port,
                to_http_port=self.address(8123)[1],
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
        return RestoreOptions(to_file=DRY_RUN_FILE, dry_run=True, yes=yes)

    def after_restore(self) -> None:
        """Wait for the pod; etcd: create the StatefulSet first, if it is not there, whose init
        container restores the snapshot (part of the RTO). Raises ScratchError."""
        if self.statefulset is not None and not self._statefulset_created:
            self.env.api.create(self.statefulset)
            self._statefulset_created = True
        self.env.wait_ready(self.pod)

    def verify_target(self) -> Any:
        if self.kind != "etcd":
            return None
        host, port = self.address(2379)
        return EtcdEndpointTarget(f"http://{host}:{port}")

    def interrupt(self) -> str:
        try:
            self.env.api.core.delete_namespaced_pod(self.pod, self.env.namespace)
        except ApiException as exc:
            raise _api_error(f"delete pod {self.pod}", exc) from exc
        return f"deleted pod {self.pod} in namespace {self.env.namespace}"

    def stage_disaster(self) -> str:
        """ClickHouse: DROP the largest table; S3: delete every object; etcd: delete the StatefulSet, its
        pod and its PVC (the data dir) and wait until they are gone."""
        if self.kind == "clickhouse":
            return drop_largest_table(self._sql(), self.database)
        if self.kind == "s3":
            return wipe_bucket(self._s3(), self.database)
        return self._wipe_etcd()

    def _wipe_etcd(self) -> str:
        namespace, core, claim = self.env.namespace, self.env.api.core, f"data-{self.pod}"
        try:
            absent(lambda: self.env.api.apps.delete_namespaced_stateful_set(self.name, namespace))
            absent(lambda: core.delete_namespaced_pod(self.pod, namespace))
            absent(lambda: core.delete_namespaced_persistent_volume_claim(claim, namespace))
        except ApiException as exc:
            raise _api_error(f"delete the etcd copy {self.name}", exc) from exc
        self._statefulset_created = False  # the recovery's after_restore creates it again
        self.env.wait_gone(f"pod {self.pod}", lambda: core.read_namespaced_pod(self.pod, namespace))
        self.env.wait_gone(f"PVC {claim}", lambda: core.read_namespaced_persistent_volume_claim(claim, namespace))
        return f"deleted StatefulSet {self.name}, pod {self.pod} and its data dir (PVC {claim}) in namespace {namespace}"

    def tamper(self) -> str:
        """ClickHouse: INSERT one duplicate row; S3: overwrite one object; etcd: delete one key."""
        if self.kind == "clickhouse":
            return duplicate_one_row(self._sql(), self.database)
        if self.kind == "s3":
            return overwrite_one_object(self._s3(), self.database)
        return delete_first_etcd_key(self.verify_target().endpoint)

    def _sql(self) -> SqlClient:
        host, port = self.address(9000)
        return self.env.clients.clickhouse(host, port, self._credentials())

    def _s3(self) -> Any:
        return self.env.clients.s3(self.endpoint, self._credentials())

    def release(self) -> None:
        """Delete this copy's StatefulSet, Service and PVC; the namespace's deletion catches the rest."""
        if self._released:
            return
        self._released = True
        for relay in self.relays.values():
            relay.close()
        namespace, core = self.env.namespace, self.env.api.core
        with contextlib.suppress(ApiException):
            absent(lambda: self.env.api.apps.delete_namespaced_stateful_set(self.name, namespace))
            absent(lambda: core.delete_namespaced_service(self.name, namespace))
            absent(lambda: core.delete_namespaced_persistent_volume_claim(f"data-{self.pod}", namespace))


# ---- the environment ---------------------------------------------------------------------------


class KubernetesScratchEnvironment:
    """Scratch targets in namespace ``<prefix><run id>`` of the configured cluster, for one drill run.
    ``policy``: the running policy, which the etcd restore pods get a part of (without it, etcd
    slots are refused)."""

    def __init__(
        self,
        settings: KubernetesScratch,
        run_id: str,
        *,
        drill: str | None = None,
        policy: Policy | None = None,
        api_client: kubernetes.client.ApiClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        token: Callable[[int], str] = secrets.token_hex,
        clients: TargetClients | None = None,
        resolve: Callable[[str, int], list[str]] = resolve_addresses,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.drill = drill or run_id  # a scratch made without a drill name (tests, tools) is labelled by run id
        self.policy = policy
        self.namespace = f"{settings.namespace_prefix}{run_id.lower()}"
        self.api = KubernetesApi(api_client or make_api_client(settings))
        self.clock = clock
        self.sleep = sleep
        self.token = token
        self.clients = clients or TargetClients()
        self.resolve = resolve
        self._servers = _servers(settings)
        self._slots: list[KubernetesSlot] = []
        self._credentials: dict[str, Credentials] = {}  # kind -> the credentials in its Secret
        self._feed_keys: list[str] | None = None  # the restore Secret's keys, once it is made
        self._etcd_sources: set[str] = set()
        self._provisioned = False

    def server(self, kind: str) -> Server:
        return self._servers[kind]

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
        """A new Service + StatefulSet for one restore of ``source``: ClickHouse and S3 ready now; etcd
        (one copy per source: see the module docstring) created by its ``after_restore``. Raises
        ScratchError."""
        if kind not in self._servers:
            raise ScratchError(f"no kubernetes scratch server for kind '{kind}'")
        if kind == "etcd" and (killable or source in self._etcd_sources):
            raise ScratchError(ETCD_FRESH_COPY)
        feed = self._restore_feed() if kind == "etcd" else None  # refused before anything is created
        self.provision()
        name = f"{kind}-{len(self._slots) + 1}"
        server = self._servers[kind]
        if kind == "etcd":
            self._etcd_sources.add(source)
            self._make_feed(feed)
        credentials = self.server_credentials(kind, server)
        statefulset = statefulset_manifest(
            self.namespace,
            name,
            server,
            self.settings,
            init_containers=etcd_restore_init_containers(source, header.id, self.settings) if kind == "etcd" else None,
            credentials_secret=credentials_secret_name(kind) if credentials else None,
            secret_keys=self._feed_keys if kind == "etcd" else None,
        )
        self.api.create(service_manifest(self.namespace, name, server))
        made = KubernetesSlot(
            self,
            kind=kind,
            name=name,
            database="restored",
            credentials=credentials,
            statefulset=statefulset if kind == "etcd" else None,
        )
        self._slots.append(made)
        if kind != "etcd":
            self.api.create(statefulset)
            self.wait_ready(made.pod)
        return made

    def _restore_feed(self) -> tuple[RestoreFeed, list[str]] | None:
        """The etcd restore pods' feed and the repository endpoint's addresses, unless this run already
        made them. Raises ScratchError: no policy, a repository a pod cannot read, an unresolvable endpoint."""
        if self._feed_keys is not None:
            return None
        if self.policy is None:
            raise ScratchError(
                "an etcd copy on kubernetes scratch is restored by an init container that needs the policy's "
                "repository settings, and this scratch environment was made without the policy"
            )
        feed = restore_feed(self.policy)
        host, port = feed.endpoint
        try:
            addresses = self.resolve(host, port)
        except OSError as exc:
            raise ScratchError(
                f"cannot resolve the repository endpoint {host} to let the restore pods reach it: {exc}"
            ) from exc
        if not addresses:
            raise ScratchError(f"the repository endpoint {host} resolves to no address")
        return feed, addresses

    def _make_feed(self, made: tuple[RestoreFeed, list[str]] | None) -> None:
        """The policy ConfigMap, the repository credentials Secret and the egress to the repository."""
        if made is None:
            return
        feed, addresses = made
        self.api.create(config_map_manifest(self.namespace, POLICY_CONFIGMAP, {POLICY_KEY: feed.policy_yaml}))
        self.api.create(secret_manifest(self.namespace, CREDENTIALS_SECRET, files=feed.secret_files))
        self.api.create(repository_egress_manifest(self.namespace, addresses, feed.endpoint[1]))
        self._feed_keys = sorted(feed.secret_files)

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
        """Wait for ``pod``'s Ready condition; raise ScratchError with its events and last log lines
        past ``ready_timeout``, or at once when one of its init containers failed (a failed restore)."""
        deadline = self.clock() + self.settings.ready_timeout.total_seconds()
        while True:
            try:
                found = self.api.core.read_namespaced_pod(pod, self.namespace)
            except ApiException as exc:
                if exc.status != 404:  # not created yet by the StatefulSet controller: keep waiting
                    raise _api_error(f"read pod {pod}", exc) from exc
            else:
                if pod_ready(found):
                    log.info("kubernetes.pod_ready", namespace=self.namespace, pod=pod)
                    return
                failed = failed_init_containers(found)
                if failed:
                    raise ScratchError(self._init_failed_message(pod, failed))
            if self.clock() >= deadline:
                raise ScratchError(self._not_ready_message(pod))
            self.sleep(POLL_SECONDS)

    def wait_gone(self, what: str, read: Callable[[], Any]) -> None:
        """Poll ``read`` until it answers 404; ScratchError past ``ready_timeout``."""
        deadline = self.clock() + self.settings.ready_timeout.total_seconds()
        try:
            while not absent(read):
                if self.clock() >= deadline:
                    raise ScratchError(f"{what} in namespace {self.namespace} still there after deletion")
                self.sleep(POLL_SECONDS)
        except ApiException as exc:
            raise _api_error(f"read {what}", exc) from exc

    def _init_failed_message(self, pod: str, failed: list[tuple[str, str]]) -> str:
        lines = [f"pod {pod} in namespace {self.namespace}: the restore failed in its init containers"]
        for container, state in failed:
            lines.append(f"init container {container}: {state}")
            lines += self._log_lines(pod, container)
        return "\n".join(lines)

    def _not_ready_message(self, pod: str) -> str:
        timeout = int(self.settings.ready_timeout.total_seconds())
        lines = [f"pod {pod} in namespace {self.namespace} not ready after {timeout}s"]
        with contextlib.suppress(ApiException):
            events = self.api.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={pod}")
            lines += [f"event {event.type} {event.reason}: {event.message}" for event in events.items]
        lines += self._log_lines(pod, None)
        return "\n".join(lines)

    def _log_lines(self, pod: str, container: str | None) -> list[str]:
        """The last log lines of ``pod`` (of its ``container``: required once a pod has init containers)."""
        prefix = f"log {container}: " if container else "log: "
        try:
            text = self.api.core.read_namespaced_pod_log(pod, self.namespace, container=container, tail_lines=LOG_TAIL_LINES)
        except ApiException:
            return []
        return [prefix + line for line in str(text or "").splitlines()[-LOG_TAIL_LINES:]]

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
