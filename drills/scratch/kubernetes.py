"""The ``kubernetes`` scratch environment (DESIGN section 5): one namespace per drill run, fenced by
a ResourceQuota, a LimitRange and a NetworkPolicy that lets nothing out but the namespace itself and
DNS; a StatefulSet + Service per restored copy; teardown deletes the namespace (foreground) and
waits until it is gone. Everything goes through the official ``kubernetes`` client. What it creates
is written by the pure functions of kubernetes_manifests.py; the port-forward relay is in proxy.py.

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
(backup/sources/etcd/restore.py): it writes the snapshot db next to the data dir on the PVC, proves it (the
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

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import kubernetes.client
import kubernetes.config
import structlog
from clickhouse_driver import Client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from backup.repository.manifest import SnapshotHeader
from backup.repository.s3store import make_client
from backup.sources.base import RestoreOptions
from backup.sources.etcd.targets import EtcdEndpointTarget
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
from drills.scratch.kubernetes_manifests import (
    CREDENTIALS_SECRET,
    DRY_RUN_FILE,
    POLICY_CONFIGMAP,
    POLICY_KEY,
    SCRATCH_REGION,
    Credentials,
    Manifest,
    RestoreFeed,
    Server,
    config_map_manifest,
    credentials_secret_name,
    etcd_restore_init_containers,
    limit_range_manifest,
    namespace_manifest,
    network_policy_manifest,
    quota_manifest,
    repository_egress_manifest,
    resolve_addresses,
    restore_feed,
    scratch_servers,
    secret_manifest,
    service_manifest,
    statefulset_manifest,
)
from drills.scratch.proxy import PortForwardRelay, StreamOpener, StreamSocket
from policies.model import KubernetesScratch, Policy

log = structlog.get_logger(__name__)
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20


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


def pod_port_opener(api: KubernetesApi, namespace: str, pod: str, port: int) -> StreamOpener:
    """Opens a new port-forward websocket to ``pod``:``port``: (its socket, what closes it).
    Raises ApiException when the API server refuses (pod gone, RBAC)."""

    def open_stream() -> tuple[StreamSocket, Callable[[], None]]:
        forward = portforward(api.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port), forward.close

    return open_stream


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
        self._servers = scratch_servers(settings)
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
