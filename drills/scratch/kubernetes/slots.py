"""The ``kubernetes`` scratch slots, one class per source kind, in the registry ``SLOTS``: each a
restored copy, a StatefulSet ``<kind>-<n>`` + Service of the same name in the drill namespace.
``KubernetesSlot`` holds what they share (the copy's objects, its address, the kill-target fault,
the release); a kind's class says how a restore reaches its copy and how the faults damage it.
ClickHouse and S3 copies are ready when made; an etcd copy is restored by its StatefulSet's init
container, created by its ``after_restore`` (the package docstring says why and what that limits).
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clickhouse_driver import Client
from kubernetes.client.exceptions import ApiException

from backup.repository.s3store import make_client
from backup.sources.base import RestoreOptions
from backup.sources.etcd.targets import EtcdEndpointTarget
from drills.scratch.common import (
    ScratchError,
    SqlClient,
    delete_first_etcd_key,
    drop_largest_table,
    duplicate_one_row,
    overwrite_one_object,
    wipe_bucket,
)
from drills.scratch.kubernetes.api import absent, api_error
from drills.scratch.kubernetes.manifests import (
    CREDENTIALS_SECRET,
    DRY_RUN_FILE,
    POLICY_CONFIGMAP,
    POLICY_KEY,
    SCRATCH_REGION,
    Credentials,
    Manifest,
    RestoreFeed,
    config_map_manifest,
    credentials_secret_name,
    etcd_restore_init_containers,
    repository_egress_manifest,
    restore_feed,
    secret_manifest,
    service_manifest,
    statefulset_manifest,
)
from drills.scratch.kubernetes.port_forward import PortForwardRelay, pod_port_opener

if TYPE_CHECKING:
    from drills.scratch.kubernetes.environment import KubernetesScratchEnvironment

RESTORED = "restored"  # the ClickHouse database / S3 bucket a restore writes in its copy
ETCD_FRESH_COPY = (
    "could not verify: this scenario needs a fresh etcd copy restored through Lifeboat's own store reads "
    "(corrupt-chunk, missing-chunk, flaky-storage) or timed by their progress (kill-target); on kubernetes "
    "scratch etcd is restored by the copy's init container, out of their reach"
)


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


# ---- what every kind's copy shares --------------------------------------------------------------


class KubernetesSlot(ABC):
    """One restored copy: a StatefulSet ``<kind>-<n>`` + Service of the same name."""

    kind: str

    def __init__(
        self, env: KubernetesScratchEnvironment, *, name: str, credentials: Credentials | None, statefulset: Manifest
    ) -> None:
        self.env = env
        self.name = name
        self.database = RESTORED
        self.credentials = credentials
        self.statefulset = statefulset
        self.host = f"{name}.{env.namespace}.svc"
        self.label = f"scratch {self.kind} {name} in namespace {env.namespace}"
        self._statefulset_created = False
        self.relays: dict[int, PortForwardRelay] = {}
        if env.settings.access == "port-forward":
            for port in env.server(self.kind).ports.values():
                opener = pod_port_opener(env.api, env.namespace, self.pod, port)
                self.relays[port] = PortForwardRelay(opener, label=f"{env.namespace}/{self.pod}:{port}")
        self._released = False

    @classmethod
    def create(cls, env: KubernetesScratchEnvironment, *, source: str, snapshot: str, killable: bool) -> KubernetesSlot:
        """A copy for one restore of ``source`` (snapshot ``snapshot``), ready now: the namespace (on
        the first slot), the copy's Service and StatefulSet, its pod Ready. Raises ScratchError."""
        env.provision()
        made = cls._declare(env)
        made.start()
        return made

    @classmethod
    def _declare(
        cls,
        env: KubernetesScratchEnvironment,
        *,
        init_containers: list[Manifest] | None = None,
        secret_keys: list[str] | None = None,
    ) -> KubernetesSlot:
        """Name the next copy, make its kind's credentials (first copy of the kind) and its Service, and
        hand it to ``env`` (its teardown releases it from here on); its StatefulSet is not created yet."""
        name = f"{cls.kind}-{env.slot_count() + 1}"
        server = env.server(cls.kind)
        credentials = env.server_credentials(cls.kind, server)
        statefulset = statefulset_manifest(
            env.namespace,
            name,
            server,
            env.settings,
            init_containers=init_containers,
            credentials_secret=credentials_secret_name(cls.kind) if credentials else None,
            secret_keys=secret_keys,
        )
        env.api.create(service_manifest(env.namespace, name, server))
        made = cls(env, name=name, credentials=credentials, statefulset=statefulset)
        env.adopt(made)
        return made

    def start(self) -> None:
        """Create the StatefulSet, if it is not there, and wait for its pod. Raises ScratchError."""
        if not self._statefulset_created:
            self.env.api.create(self.statefulset)
            self._statefulset_created = True
        self.env.wait_ready(self.pod)

    @property
    def pod(self) -> str:
        return f"{self.name}-0"

    def address(self, port: int) -> tuple[str, int]:
        """Where this process reaches the pod's ``port``: the service, or the local end of its port-forward."""
        relay = self.relays.get(port)
        return ("127.0.0.1", relay.port) if relay else (self.host, port)

    def in_cluster(self) -> KubernetesSlot:
        """This copy as a pod of the drill namespace reaches it: by its service's DNS name, never
        through this process's port-forward relays. A view: it shares the copy, is never released."""
        view = copy.copy(self)
        view.relays = {}
        return view

    def _credentials(self) -> Credentials:
        if self.credentials is None:
            raise ScratchError(f"{self.label} has no credentials")
        return self.credentials

    @abstractmethod
    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """Where a restore writes this copy (``direct`` changes nothing: a copy has no cuttable relay)."""

    def after_restore(self) -> None:
        """Wait for the pod (etcd: create the StatefulSet first, whose init container restores the
        snapshot: part of the RTO). Raises ScratchError."""
        self.start()

    def verify_target(self) -> Any:
        return None

    def interrupt(self) -> str:
        try:
            self.env.api.core.delete_namespaced_pod(self.pod, self.env.namespace)
        except ApiException as exc:
            raise api_error(f"delete pod {self.pod}", exc) from exc
        return f"deleted pod {self.pod} in namespace {self.env.namespace}"

    @abstractmethod
    def stage_disaster(self) -> str: ...

    tamper_name: str  # what ``tamper`` does, for the canary's report

    @abstractmethod
    def tamper(self) -> str: ...

    def tampers(self) -> dict[str, Callable[[], str]]:
        """The one tamper kind a Kubernetes copy has so far (the local slots have more)."""
        return {self.tamper_name: self.tamper}

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


# ---- ClickHouse ---------------------------------------------------------------------------------


class ClickHouseSlot(KubernetesSlot):
    kind = "clickhouse"
    tamper_name = "duplicate-row"

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """The service (or port-forward) and the run's credentials."""
        credentials = self._credentials()
        host, port = self.address(9000)
        return RestoreOptions.of(
            to_host=host,
            to_port=port,
            to_http_port=self.address(8123)[1],
            to_database=self.database,
            to_user=credentials.user,
            to_password=credentials.password,
            yes=yes,
        )

    def stage_disaster(self) -> str:
        """DROP the largest table."""
        return drop_largest_table(self._sql(), self.database)

    def tamper(self) -> str:
        """INSERT one duplicate row."""
        return duplicate_one_row(self._sql(), self.database)

    def _sql(self) -> SqlClient:
        host, port = self.address(9000)
        return self.env.clients.clickhouse(host, port, self._credentials())


# ---- S3 -----------------------------------------------------------------------------------------


class S3Slot(KubernetesSlot):
    kind = "s3"
    tamper_name = "object-bytes"

    @property
    def endpoint(self) -> str:
        host, port = self.address(9000)
        return f"http://{host}:{port}"

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """The service (or port-forward) and the run's credentials."""
        credentials = self._credentials()
        return RestoreOptions.of(
            to_endpoint=self.endpoint,
            to_bucket=self.database,
            to_access_key_id=credentials.user,
            to_secret_access_key=credentials.password,
            yes=yes,
        )

    def stage_disaster(self) -> str:
        """Delete every object."""
        return wipe_bucket(self._s3(), self.database)

    def tamper(self) -> str:
        """Overwrite one object."""
        return overwrite_one_object(self._s3(), self.database)

    def _s3(self) -> Any:
        return self.env.clients.s3(self.endpoint, self._credentials())


# ---- etcd ---------------------------------------------------------------------------------------


class EtcdSlot(KubernetesSlot):
    kind = "etcd"
    tamper_name = "delete-key"

    @classmethod
    def create(cls, env: KubernetesScratchEnvironment, *, source: str, snapshot: str, killable: bool) -> KubernetesSlot:
        """The copy of ``source``, one per source and drill run (see the package docstring), its
        StatefulSet made by ``after_restore``; the first one also makes the restore pods' feed.
        Refused (ScratchError) before anything is created."""
        if killable or source in env.etcd_sources:
            raise ScratchError(ETCD_FRESH_COPY)
        feed = cls._restore_feed(env)
        env.provision()
        env.etcd_sources.add(source)
        cls._make_feed(env, feed)
        init_containers = etcd_restore_init_containers(source, snapshot, env.settings)
        return cls._declare(env, init_containers=init_containers, secret_keys=env.restore_feed_keys)

    @staticmethod
    def _restore_feed(env: KubernetesScratchEnvironment) -> tuple[RestoreFeed, list[str]] | None:
        """The etcd restore pods' feed and the repository endpoint's addresses, unless this run already
        made them. Raises ScratchError: no policy, a repository a pod cannot read, an unresolvable endpoint."""
        if env.restore_feed_keys is not None:
            return None
        if env.policy is None:
            raise ScratchError(
                "an etcd copy on kubernetes scratch is restored by an init container that needs the policy's "
                "repository settings, and this scratch environment was made without the policy"
            )
        feed = restore_feed(env.policy)
        host, port = feed.endpoint
        try:
            addresses = env.resolve(host, port)
        except OSError as exc:
            raise ScratchError(
                f"cannot resolve the repository endpoint {host} to let the restore pods reach it: {exc}"
            ) from exc
        if not addresses:
            raise ScratchError(f"the repository endpoint {host} resolves to no address")
        return feed, addresses

    @staticmethod
    def _make_feed(env: KubernetesScratchEnvironment, made: tuple[RestoreFeed, list[str]] | None) -> None:
        """The policy ConfigMap, the repository credentials Secret and the egress to the repository."""
        if made is None:
            return
        feed, addresses = made
        env.api.create(config_map_manifest(env.namespace, POLICY_CONFIGMAP, {POLICY_KEY: feed.policy_yaml}))
        env.api.create(secret_manifest(env.namespace, CREDENTIALS_SECRET, files=feed.secret_files))
        env.api.create(repository_egress_manifest(env.namespace, addresses, feed.endpoint[1]))
        env.restore_feed_keys = sorted(feed.secret_files)

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """A dry run (``DRY_RUN_FILE``) that proves the snapshot's manifest readable; the init
        container restores it, in ``after_restore``."""
        return RestoreOptions.of(to_file=DRY_RUN_FILE, dry_run=True, yes=yes)

    def verify_target(self) -> Any:
        host, port = self.address(2379)
        return EtcdEndpointTarget(f"http://{host}:{port}")

    def stage_disaster(self) -> str:
        """Delete the StatefulSet, its pod and its PVC (the data dir) and wait until they are gone."""
        namespace, core, claim = self.env.namespace, self.env.api.core, f"data-{self.pod}"
        try:
            absent(lambda: self.env.api.apps.delete_namespaced_stateful_set(self.name, namespace))
            absent(lambda: core.delete_namespaced_pod(self.pod, namespace))
            absent(lambda: core.delete_namespaced_persistent_volume_claim(claim, namespace))
        except ApiException as exc:
            raise api_error(f"delete the etcd copy {self.name}", exc) from exc
        self._statefulset_created = False  # the recovery's after_restore creates it again
        self.env.wait_gone(f"pod {self.pod}", lambda: core.read_namespaced_pod(self.pod, namespace))
        self.env.wait_gone(f"PVC {claim}", lambda: core.read_namespaced_persistent_volume_claim(claim, namespace))
        return f"deleted StatefulSet {self.name}, pod {self.pod} and its data dir (PVC {claim}) in namespace {namespace}"

    def tamper(self) -> str:
        """Delete one key, through the copy's endpoint."""
        return delete_first_etcd_key(self.verify_target().endpoint)


SLOTS: dict[str, type[KubernetesSlot]] = {"etcd": EtcdSlot, "clickhouse": ClickHouseSlot, "s3": S3Slot}
