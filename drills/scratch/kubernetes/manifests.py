"""What the ``kubernetes`` scratch environment asks the API server to create: pure
functions from the settings to manifests (plain dicts that the official client's models validate),
the credentials and servers they describe, and the names and labels the environment and the janitor
share. Nothing here talks to a cluster.
"""

from __future__ import annotations

import base64
import math
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

from drills.scratch.common import ScratchError
from policies.model import CommandCheck, KubernetesScratch, Policy, reveal

Manifest = dict[str, Any]
MANAGED_BY = "app.kubernetes.io/managed-by"
DRILL_LABEL = "lifeboat.io/drill"
EXPIRES_AT = "lifeboat.io/expires-at"
SLOT_LABEL = "lifeboat.io/slot"
CHECK_LABEL = "lifeboat.io/check"  # a drill command check's Job and pod: the check's name
CHECK_CONTAINER = "check"
CHECK_JOB_TTL = 3600  # seconds a finished check Job outlives a teardown that could not delete it
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


def scratch_servers(settings: KubernetesScratch) -> dict[str, Server]:
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


def check_job_name(number: int, check: str) -> str:
    """``check-<n>-<check>``: the ``n``-th command check Job of the run, a DNS-1123 label."""
    return f"check-{number}-{re.sub(r'[^a-z0-9-]', '-', check)}"[:63].rstrip("-")


def env_entries(env: dict[str, str], secret_refs: dict[str, tuple[str, str]]) -> list[Manifest]:
    """A container's ``env``, by name: a value that is a key of ``secret_refs`` (a scratch server's
    password) is read from that (Secret, key) instead of being written into the object."""
    entries: list[Manifest] = []
    for name, value in sorted(env.items()):
        if value in secret_refs:
            secret, key = secret_refs[value]
            entries.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        else:
            entries.append({"name": name, "value": value})
    return entries


def check_job_manifest(namespace: str, name: str, check: CommandCheck, env: list[Manifest], *, drill: str) -> Manifest:
    """A drill's command check as a ``batch/v1`` Job of the drill namespace: one pod from
    ``check.image`` running ``check.command`` with exactly ``env`` (no service links, no service
    account token: it needs the copies, not the API), never retried, killed past the check's timeout.
    Labelled as the drill namespace is (``MANAGED_BY``, ``DRILL_LABEL``), so leftovers go with it."""
    labels = {MANAGED_BY: "lifeboat", DRILL_LABEL: drill, CHECK_LABEL: check.name}
    container: Manifest = {
        "name": CHECK_CONTAINER,
        "image": check.image,
        "command": list(check.command),
        "env": env,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no <SERVICE>_PORT variables: the environment is the check's alone
        "containers": [container],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(check.timeout.total_seconds())),
            "ttlSecondsAfterFinished": CHECK_JOB_TTL,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class RestoreFeed:
    """What the etcd restore init container is given: the policy file (ConfigMap), the secret files
    it names (Secret), and the repository endpoint they must reach (host, TCP port)."""

    policy_yaml: str
    secret_files: dict[str, bytes]
    endpoint: tuple[str, int]


def restore_feed(policy: Policy) -> RestoreFeed:
    """The pod's policy: ``policy``'s repository (read with ``scratch.kubernetes.restore_credentials``
    when set), every secret of it as a file under /etc/lifeboat/secrets,
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
    keys = policy.scratch.kubernetes.restore_credentials or repository.s3
    for name in ("access_key_id", "secret_access_key"):
        value = reveal(getattr(keys, name))
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
