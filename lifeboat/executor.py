"""The ``kubernetes`` backup executor (``executor: {kind: kubernetes}``, issue 9 item 3): instead of
snapshotting in its own process, ``lifeboat serve`` submits one ``batch/v1`` Job per source run that
runs ``lifeboat backup run --source NAME --json`` in the Lifeboat image, follows it to completion and
turns the JSON document the pod printed into the same ``BackupResult`` a local run returns, so that
``Operations.backup`` records both alike.

The Job's pod runs as the ``lifeboat-runner`` service account (no API rights, no token), passes Pod
Security "restricted", reads the policy from the ConfigMap and every secret file the policy names
from the Secret, as deploy/kubernetes/base/deployment.yaml mounts them. Its own state DB is an
emptyDir: the service's state DB is the run history.

Shards (``executor.kubernetes.shards: {SOURCE: N}``, S3 by bucket, ClickHouse logical by table): the
run is N Jobs ``lifeboat-backup-<source>-<run id>-<i>of<N>`` side by side, each running ``backup run
--source NAME --shard I/N --part-of RUN --json`` into a part manifest (backup/repository/parts.py),
followed together. When every one has succeeded, the service merges the parts into ONE snapshot
(``backup.jobs.merge_parts``, no data moves), guarded and recorded like any run. The first failure
ends the run: the Jobs still running are deleted, the run's parts discarded, nothing is committed,
and the error names the failed shard with its reason and last log lines.

Never run against a real cluster: tests drive the real client against tests/k8s_fake.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes.client
import kubernetes.config
import structlog
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from backup.jobs import BackupResult, discard_parts, merge_parts
from backup.repository.manifest import SnapshotHeader
from backup.repository.parts import PartOf, Shard
from backup.repository.repository import Repository, WriteStats
from backup.sources.base import Progress
from drills.scratch.kubernetes.api import make_api_client
from lifeboat.context import EXIT_SUSPICIOUS
from lifeboat.notify.base import NOTIFICATIONS_ENV
from policies.errors import SourceError
from policies.model import KubernetesExecutor, Policy, SecretFile

log = structlog.get_logger(__name__)
Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
SOURCE_LABEL = "lifeboat.io/source"
RUN_LABEL = "lifeboat.io/run"
SHARD_LABEL = "lifeboat.io/shard"  # "2of3" on the Jobs of a sharded run
CONTAINER = "backup"
CONFIG_DIR = PurePosixPath("/etc/lifeboat")
SECRETS_DIR = CONFIG_DIR / "secrets"
POLICY_FILE = CONFIG_DIR / "lifeboat.yaml"
MAX_NAME = 63  # a DNS-1123 label: Job names become the pods' job-name label values
FOLLOW_SLACK_SECONDS = 120.0  # past activeDeadlineSeconds: time for the Job controller to say Failed
LOG_TAIL_LINES = 20
_RESULT_KEYS = frozenset(
    {"id", "source", "kind", "status", "started", "finished", "seconds", "bytes_read", "bytes_stored"}
    | {"chunks_new", "chunks_reused", "size", "entries", "anomalies"}
)  # the keys of BackupResult.as_dict() that are not the source's own figures


# ---- the Job (pure) --------------------------------------------------------------------------------


def job_name(source: str, run_id: int, shard: Shard | None = None) -> str:
    """``lifeboat-backup-<source>-<run id>[-<i>of<n>]`` as a DNS-1123 label: ``_`` becomes ``-``, the
    source part is cut so that the whole fits in 63 characters."""
    suffix = f"-{run_id}" + (f"-{shard.index}of{shard.count}" if shard else "")
    room = MAX_NAME - len("lifeboat-backup-") - len(suffix)
    stem = re.sub(r"[^a-z0-9-]", "-", source.lower())[:room].strip("-") or "source"
    return f"lifeboat-backup-{stem}{suffix}"


def _label_value(text: str) -> str:
    """A label value: at most 63 characters, starting and ending alphanumeric."""
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", text[:MAX_NAME]) or "unknown"


def secret_keys(policy: Policy) -> list[str]:
    """The keys of the Secret the pod needs: every file the policy names under /etc/lifeboat/secrets/
    (``{file: ...}`` secrets, key files, TLS files); the key is the file's name, as in deployment.yaml."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, SecretFile):
            walk(node.file)
        elif isinstance(node, Path):
            path = PurePosixPath(node)
            if path.parent == SECRETS_DIR:
                found.add(path.name)
        elif isinstance(node, BaseModel):
            for field_name in type(node).model_fields:
                walk(getattr(node, field_name))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(policy)
    return sorted(found)


def backup_job_manifest(policy: Policy, source: str, run_id: int, *, part: PartOf | None = None) -> Manifest:
    """The ``batch/v1`` Job that backs up ``source`` for run ``run_id`` of the service's state DB
    (with ``part``: that shard's part of the sharded run ``part.run``)."""
    settings = policy.executor.kubernetes
    name = job_name(source, run_id, part.shard if part else None)
    labels = {MANAGED_BY: "lifeboat", SOURCE_LABEL: _label_value(source), RUN_LABEL: str(run_id)}
    argv = ["--config", str(POLICY_FILE), "--log-format", "json", "backup", "run", "--source", source]
    if part is not None:
        labels[SHARD_LABEL] = f"{part.shard.index}of{part.shard.count}"
        argv += ["--shard", str(part.shard), "--part-of", part.run]
    argv.append("--json")
    container: Manifest = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["lifeboat"],
        "args": argv,
        # the service that submitted the Job notifies (once per incident, from its own state DB)
        "env": [{"name": NOTIFICATIONS_ENV, "value": "off"}],
        "resources": {"requests": dict(settings.resources.requests), "limits": dict(settings.resources.limits)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True},
            {"name": "state", "mountPath": str(PurePosixPath(policy.state).parent)},  # the pod's own run history
            {"name": "tmp", "mountPath": "/tmp"},  # snapshots are staged here; the root file system is read-only
        ],
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,  # the secret files are 0440, readable through the group
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [_config_volume(policy, settings), _empty_dir("state", "1Gi"), _empty_dir("tmp", settings.tmp_size)],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "backoffLimit": settings.backoff_limit,
            # `backup run` exits 4 after committing a suspicious snapshot: no retry (it would take
            # another snapshot); the Job fails, and its document says what was taken (see backup()).
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_SUSPICIOUS]},
                    }
                ]
            },
            "activeDeadlineSeconds": int(settings.active_deadline.total_seconds()),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _config_volume(policy: Policy, settings: KubernetesExecutor) -> Manifest:
    """/etc/lifeboat: lifeboat.yaml from the ConfigMap and secrets/<key> from the Secret (0440)."""
    items = [{"key": key, "path": f"secrets/{key}"} for key in secret_keys(policy)]
    sources: list[Manifest] = [
        {"configMap": {"name": settings.policy_configmap, "items": [{"key": POLICY_FILE.name, "path": POLICY_FILE.name}]}}
    ]
    if items:
        sources.append({"secret": {"name": settings.secret, "items": items}})
    return {"name": "config", "projected": {"defaultMode": 0o440, "sources": sources}}


def _empty_dir(name: str, size: str) -> Manifest:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


# ---- what the pod printed (pure) -------------------------------------------------------------------


def backup_document(log_text: str) -> dict[str, Any] | None:
    """The ``{"snapshots": [...], "errors": [...]}`` document of ``backup run --json`` in a pod log
    (stdout and the JSON log lines of stderr are interleaved there); None when there is none."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{", log_text, flags=re.MULTILINE):
        with contextlib.suppress(ValueError):
            document, _ = decoder.raw_decode(log_text, match.start())
            if isinstance(document, dict) and "snapshots" in document and "errors" in document:
                return document
    return None


def result_from_dict(item: dict[str, Any]) -> BackupResult:
    """The ``BackupResult`` whose ``as_dict()`` is ``item`` (one of the document's ``snapshots``)."""
    header = SnapshotHeader(
        id=item["id"],
        source=item["source"],
        kind=item["kind"],
        started=datetime.fromisoformat(item["started"]),
        finished=datetime.fromisoformat(item["finished"]),
        status=item["status"],
        tool_version="",
        entry_count=item["entries"],
        size=item["size"],
        entries_chunks=[],
    )
    stats = WriteStats(item["bytes_read"], item["bytes_stored"], item["chunks_new"], item["chunks_reused"])
    figures = {key: value for key, value in item.items() if key not in _RESULT_KEYS}
    return BackupResult(header, stats, figures, float(item["seconds"]), list(item["anomalies"]))


def job_outcome(job: Any, backoff_limit: int) -> tuple[bool, str] | None:
    """(succeeded, reason) once the Job has finished, None while it runs."""
    status = job.status
    if status is None:
        return None
    for condition in status.conditions or []:
        if condition.status == "True" and condition.type == "Complete":
            return True, "Complete"
        if condition.status == "True" and condition.type == "Failed":
            return False, f"{condition.reason or 'Failed'}: {condition.message or 'no message'}"
    if (status.succeeded or 0) >= 1:
        return True, "Complete"
    if (status.failed or 0) > backoff_limit:
        return False, f"{status.failed} pod(s) failed"
    return None


# ---- the API ---------------------------------------------------------------------------------------


@dataclass
class KubernetesBackupExecutor:
    """Runs one source's backup as a Job in ``policy.executor.kubernetes.namespace`` and follows it."""

    policy: Policy
    api_client: kubernetes.client.ApiClient | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.settings = self.policy.executor.kubernetes
        client = self.api_client or make_api_client(self.settings)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def backup(
        self, name: str, *, run_id: int, progress: Progress | None = None, repository: Repository | None = None
    ) -> BackupResult:
        """Submit the Job for ``name``, wait for it, return the pod's result; a source with shards
        (``executor.kubernetes.shards``) runs as shard Jobs merged into ``repository`` (required then).

        Raises SourceError when the Job fails, does not finish within its active deadline (plus
        slack), or succeeds without a result; the message holds the reason and the last log lines.
        An interruption (JobAborted) or a deadline overrun deletes the Job before propagating."""
        count = self.settings.shards.get(name, 1)
        if count > 1:
            if repository is None:
                raise ValueError(f"source '{name}' is sharded: its parts are merged into the repository, which is needed")
            return self._backup_sharded(name, count, run_id=run_id, progress=progress, repository=repository)
        job = self._submit(name, backup_job_manifest(self.policy, name, run_id))
        try:
            succeeded, reason = self._follow_all([job], progress)[job]
        except BaseException:
            self._delete(job)
            raise
        log_text = self._pod_log(job)
        document = backup_document(log_text)
        taken: list[dict[str, Any]] = document["snapshots"] if document and not document["errors"] else []
        suspicious = any(item.get("status") == "suspicious" for item in taken)
        if taken and (succeeded or suspicious):  # a suspicious snapshot fails the Job (exit 4), committed
            log.info("executor.job_succeeded", source=name, job=job)
            return result_from_dict(taken[0])
        reason = "the Job completed, but without a committed snapshot" if succeeded else reason
        raise SourceError(self._failure_message(job, reason, document, log_text))

    def _backup_sharded(
        self, name: str, count: int, *, run_id: int, progress: Progress | None, repository: Repository
    ) -> BackupResult:
        """The shard Jobs of ``name``, followed together, then their parts merged (module docstring)."""
        run = f"{run_id}-{secrets.token_hex(3)}"  # unique even if the state DB (and its run ids) starts over
        shards = {job_name(name, run_id, shard): shard for shard in (Shard(i, count) for i in range(1, count + 1))}
        submitted: list[str] = []
        try:
            for shard in shards.values():
                manifest = backup_job_manifest(self.policy, name, run_id, part=PartOf(run, shard))
                submitted.append(self._submit(name, manifest))
            outcomes = self._follow_all(submitted, progress)
        except BaseException:
            for job in submitted:
                self._delete(job)
            discard_parts(repository, name, run)
            raise
        failures = self._shard_failures(shards, outcomes)
        if failures:
            for job in submitted:
                if job not in outcomes:  # still running: its part would be discarded anyway
                    self._delete(job)
            discard_parts(repository, name, run)
            raise SourceError(f"sharded backup of '{name}' failed; nothing committed\n" + "\n".join(failures))
        log.info("executor.shards_succeeded", source=name, run=run, shards=count)
        stale_after = self.policy.repository.lock_stale_after.total_seconds()
        return merge_parts(repository, name, self.policy.sources[name], run, stale_after=stale_after)

    def _shard_failures(self, shards: dict[str, Shard], outcomes: dict[str, tuple[bool, str]]) -> list[str]:
        """Per failed shard: its reason and last log lines. Once all have succeeded, a shard whose pod
        printed no part is a failure too."""
        any_failed = not all(succeeded for succeeded, _ in outcomes.values())
        failures = []
        for job, (succeeded, reason) in sorted(outcomes.items(), key=lambda item: shards[item[0]]):
            if succeeded and any_failed:
                continue
            log_text = self._pod_log(job)
            document = backup_document(log_text)
            if succeeded and document and document["snapshots"] and not document["errors"]:
                continue
            reason = "the Job completed, but without a committed part" if succeeded else reason
            failures.append(f"shard {shards[job]}: {self._failure_message(job, reason, document, log_text)}")
        return failures

    def _submit(self, name: str, manifest: Manifest) -> str:
        job = str(manifest["metadata"]["name"])
        body: Any = manifest  # plain JSON: the client sends a dict as it is (tests validate it as the models)
        try:
            self.batch.create_namespaced_job(self.settings.namespace, body=body)
        except ApiException as exc:
            raise SourceError(f"kubernetes: cannot create Job {job}: {exc.status} {exc.reason}") from exc
        log.info("executor.job_submitted", source=name, job=job, namespace=self.settings.namespace)
        return job

    def _follow_all(self, jobs: list[str], progress: Progress | None) -> dict[str, tuple[bool, str]]:
        """Poll ``jobs`` until all have finished or one has failed: (succeeded, reason) of the finished
        ones. Raises SourceError past the active deadline (plus slack), or when a Job cannot be read."""
        deadline = self.clock() + self.settings.active_deadline.total_seconds() + FOLLOW_SLACK_SECONDS
        finished: dict[str, tuple[bool, str]] = {}
        while True:
            if progress is not None:
                progress(0)  # the service's abort point
            for job in (job for job in jobs if job not in finished):
                try:
                    found = self.batch.read_namespaced_job(job, self.settings.namespace)
                    outcome = job_outcome(found, self.settings.backoff_limit)
                except ApiException as exc:
                    raise SourceError(f"kubernetes: cannot read Job {job}: {exc.status} {exc.reason}") from exc
                if outcome is not None:
                    finished[job] = outcome
            if len(finished) == len(jobs) or not all(succeeded for succeeded, _ in finished.values()):
                return finished
            if self.clock() >= deadline:
                running = ", ".join(f"{self.settings.namespace}/{job}" for job in jobs if job not in finished)
                raise SourceError(
                    f"backup Job {running} did not finish within its active deadline "
                    f"({int(self.settings.active_deadline.total_seconds())}s); deleted"
                )
            self.sleep(self.settings.poll_interval.total_seconds())

    def _pod_log(self, job: str) -> str:
        """The log of the Job's newest pod ('' when it has none, or it cannot be read)."""
        namespace = self.settings.namespace
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
            named = sorted((str(pod.metadata.creation_timestamp), pod.metadata.name) for pod in pods if pod.metadata)
            newest = [name for _, name in named if name]
            if not newest:
                return ""
            return str(self.core.read_namespaced_pod_log(newest[-1], namespace, container=CONTAINER) or "")
        except ApiException as exc:
            log.warning("executor.log_unreadable", job=job, status=exc.status, reason=exc.reason)
            return ""

    def _failure_message(self, job: str, reason: str, document: dict[str, Any] | None, log_text: str) -> str:
        lines = [f"backup Job {self.settings.namespace}/{job} failed ({reason})"]
        if document is not None:
            lines += [f"{error.get('source')}: {error.get('message')}" for error in document.get("errors", [])]
            if not document.get("errors") and not document.get("snapshots"):
                lines.append("its result lists no snapshot")
        else:
            lines.append("its log holds no backup JSON document")
        with contextlib.suppress(ApiException):
            events = self.core.list_namespaced_event(self.settings.namespace, field_selector=f"involvedObject.name={job}")
            lines += [f"event {event.type} {event.reason}: {event.message}" for event in events.items]
        tail = log_text.splitlines()[-LOG_TAIL_LINES:]
        lines += ["last log lines:", *tail] if tail else ["no pod log"]
        return "\n".join(lines)

    def _delete(self, job: str) -> None:
        """Delete the Job and its pods (best effort: the TTL removes it otherwise)."""
        try:
            self.batch.delete_namespaced_job(job, self.settings.namespace, propagation_policy="Background")
            log.info("executor.job_deleted", job=job)
        except ApiException as exc:
            log.warning("executor.job_not_deleted", job=job, status=exc.status, reason=exc.reason)
