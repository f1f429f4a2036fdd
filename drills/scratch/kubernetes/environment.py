"""The ``kubernetes`` scratch environment of one drill run: namespace ``<prefix><run id>`` and its
fences (made on the first slot), the slots of slots.py, the credentials of the run's servers, the
waits for a pod to be ready or an object gone, and the teardown (the package docstring says the rest).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import structlog
from kubernetes.client.exceptions import ApiException

from backup.repository.manifest import SnapshotHeader
from drills.scratch.base import Slot
from drills.scratch.common import ScratchError
from drills.scratch.kubernetes.api import (
    KubernetesApi,
    absent,
    api_error,
    failed_init_containers,
    make_api_client,
    pod_ready,
)
from drills.scratch.kubernetes.manifests import (
    Credentials,
    Server,
    credentials_secret_name,
    limit_range_manifest,
    namespace_manifest,
    network_policy_manifest,
    quota_manifest,
    resolve_addresses,
    scratch_servers,
    secret_manifest,
)
from drills.scratch.kubernetes.slots import SLOTS, KubernetesSlot, TargetClients
from policies.model import KubernetesScratch, Policy

log = structlog.get_logger(__name__)
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20


class KubernetesScratchEnvironment:
    """Scratch targets in namespace ``<prefix><run id>`` of the configured cluster, for one drill run.
    ``policy``: the running policy, which the etcd restore pods get a part of (without it, etcd
    slots are refused)."""

    runs_command_checks = False  # not yet: a command check would run as a Job in the drill namespace

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
        self.restore_feed_keys: list[str] | None = None  # the etcd restore Secret's keys, once it is made
        self.etcd_sources: set[str] = set()  # one etcd copy per source and run
        self._servers = scratch_servers(settings)
        self._slots: list[KubernetesSlot] = []
        self._credentials: dict[str, Credentials] = {}  # kind -> the credentials in its Secret
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
        """A new Service + StatefulSet for one restore of ``source``, made by ``kind``'s slot class:
        ClickHouse and S3 ready now; etcd (one copy per source: see the package docstring) created
        by its ``after_restore``. Raises ScratchError."""
        slot_class = SLOTS.get(kind)
        if slot_class is None or kind not in self._servers:
            raise ScratchError(f"no kubernetes scratch server for kind '{kind}'")
        return slot_class.create(self, source=source, snapshot=header.id, killable=killable)

    def slot_count(self) -> int:
        """How many slots this run made so far."""
        return len(self._slots)

    def adopt(self, made: KubernetesSlot) -> None:
        """Count ``made`` among this run's slots: teardown releases it."""
        self._slots.append(made)

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
                    raise api_error(f"read pod {pod}", exc) from exc
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
            raise api_error(f"read {what}", exc) from exc

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
            raise api_error(f"delete namespace {self.namespace}", exc) from exc
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
