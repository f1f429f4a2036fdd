"""The ``kubernetes`` scratch environment of one drill run: namespace ``<prefix><run id>`` and its
fences (made on the first slot), the slots of slots.py, the credentials of the run's servers, the
waits for a pod to be ready or an object gone, the drill's command checks as Jobs, and the teardown
(the package docstring says the rest).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import kubernetes.client
import structlog
from kubernetes.client.exceptions import ApiException

from backup.repository.manifest import SnapshotHeader
from drills.scratch.base import CommandRun, Slot, tail
from drills.scratch.common import ScratchError
from drills.scratch.kubernetes.api import (
    KubernetesApi,
    absent,
    api_error,
    container_state,
    failed_init_containers,
    job_finished,
    make_api_client,
    pod_ready,
)
from drills.scratch.kubernetes.manifests import (
    CHECK_CONTAINER,
    Credentials,
    Server,
    check_job_manifest,
    check_job_name,
    credentials_secret_name,
    env_entries,
    limit_range_manifest,
    namespace_manifest,
    network_policy_manifest,
    quota_manifest,
    resolve_addresses,
    scratch_servers,
    secret_manifest,
)
from drills.scratch.kubernetes.slots import SLOTS, KubernetesSlot, TargetClients
from policies.durations import format_duration
from policies.model import CommandCheck, KubernetesScratch, Policy

log = structlog.get_logger(__name__)
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20
CHECK_SLACK_SECONDS = 60.0  # past a check Job's activeDeadlineSeconds: time for the Job controller to say Failed
# A check's container waiting for one of these will not start by itself: ERROR at once.
CANNOT_START = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
NOT_STARTED = frozenset({"StartError", "ContainerCannotRun"})  # terminated reasons of a program that never ran


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
        self.restore_feed_keys: list[str] | None = None  # the etcd restore Secret's keys, once it is made
        self.etcd_sources: set[str] = set()  # one etcd copy per source and run
        self._servers = scratch_servers(settings)
        self._slots: list[KubernetesSlot] = []
        self._credentials: dict[str, Credentials] = {}  # kind -> the credentials in its Secret
        self._jobs: list[str] = []  # the command check Jobs made, deleted by teardown
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

    # ---- command checks ------------------------------------------------------------------------

    def command_view(self, slot: Slot) -> Slot:
        """A check's pod reaches a copy by its service's DNS name, whatever ``access`` this process uses."""
        return slot.in_cluster() if isinstance(slot, KubernetesSlot) else slot

    def run_command(self, check: CommandCheck, env: dict[str, str]) -> CommandRun:
        """``check`` as a Job of the drill namespace (manifests.check_job_manifest), followed to its
        end: its container's exit code and the tail of its log; None with the reason when it cannot
        start (no image, an image that cannot be pulled) or does not finish within its timeout.
        The scratch servers' passwords reach it from their Secret, not written into the Job."""
        if check.image is None:
            return CommandRun(
                None,
                [],
                "a command check on kubernetes scratch runs as a Job in the drill namespace: "
                f"add image: to drill check {check.name}, an image that has {check.command[0]}",
            )
        self.provision()
        name = check_job_name(len(self._jobs) + 1, check.name)
        manifest = check_job_manifest(self.namespace, name, check, env_entries(env, self._secret_refs()), drill=self.drill)
        try:
            self.api.create(manifest)
        except ScratchError as exc:
            return CommandRun(None, [], str(exc))
        self._jobs.append(name)
        return self._follow(name, check)

    def _secret_refs(self) -> dict[str, tuple[str, str]]:
        """Each scratch server password of this run -> (its Secret, the key holding it)."""
        refs = {}
        for kind, made in self._credentials.items():
            as_env = self._servers[kind].credentials_env
            for key, value in (as_env(made) if as_env else {}).items():
                if value == made.password:
                    refs[value] = (credentials_secret_name(kind), key)
        return refs

    def _follow(self, name: str, check: CommandCheck) -> CommandRun:
        """Poll Job ``name`` until it ends, its container cannot start, or its timeout (plus slack) passed."""
        where = f"Job {name} in namespace {self.namespace}"
        took_too_long = f"{where} did not finish within the check's timeout {format_duration(check.timeout)}"
        deadline = self.clock() + check.timeout.total_seconds() + CHECK_SLACK_SECONDS
        while True:
            try:
                job = self.api.batch.read_namespaced_job(name, self.namespace)
                pod = self._check_pod(name)
            except ApiException as exc:
                return CommandRun(None, [], str(api_error(f"read {where}", exc)))
            finished = job_finished(job)
            state = container_state(pod, CHECK_CONTAINER)
            if finished is not None:
                output = self._check_log(pod)
                kind, reason, message = finished
                terminated = state.terminated if state else None
                if kind == "Complete":
                    return CommandRun(0, output)
                if reason == "DeadlineExceeded":
                    return CommandRun(None, output, f"{took_too_long} ({reason}: {message})")
                if terminated is not None and terminated.reason in NOT_STARTED:
                    return CommandRun(None, output, f"{where}: its program did not start: {terminated.message or ''}")
                if terminated is not None and terminated.exit_code is not None:
                    return CommandRun(terminated.exit_code, output)
                return CommandRun(None, output, f"{where} failed without an exit code ({reason}: {message})")
            waiting = state.waiting if state else None
            if waiting is not None and waiting.reason in CANNOT_START:
                return CommandRun(
                    None, self._check_log(pod), f"{where} cannot start its container: {waiting.reason}: {waiting.message}"
                )
            if self.clock() >= deadline:
                phase = pod.status.phase if pod is not None and pod.status else "not created"
                return CommandRun(None, self._check_log(pod), f"{took_too_long} (its pod: {phase})")
            self.sleep(POLL_SECONDS)

    def _check_pod(self, job: str) -> Any:
        """The newest pod of Job ``job``, or None."""
        pods = self.api.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job}").items
        return max(pods, key=lambda pod: str(pod.metadata.creation_timestamp if pod.metadata else ""), default=None)

    def _check_log(self, pod: Any) -> list[str]:
        """The last lines of the check container's log ([] when there is none to read)."""
        if pod is None:
            return []
        try:
            text = self.api.core.read_namespaced_pod_log(
                pod.metadata.name, self.namespace, container=CHECK_CONTAINER, tail_lines=LOG_TAIL_LINES
            )
        except ApiException:
            return []
        return tail(str(text or ""))

    def teardown(self) -> list[str]:
        """Delete the check Jobs (background propagation: their pods go with them), release every
        slot, delete the namespace with foreground propagation and wait until it is gone
        (``teardown_timeout``); ScratchError if it is still there (the janitor retries)."""
        removed = []
        for job in self._jobs:
            with contextlib.suppress(ApiException):  # the namespace's deletion takes it anyway
                absent(partial(self.api.batch.delete_namespaced_job, job, self.namespace, propagation_policy="Background"))
            removed.append(f"job {job} in namespace {self.namespace}")
        self._jobs.clear()
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
