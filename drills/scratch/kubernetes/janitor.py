"""The Kubernetes janitor (DESIGN section 5): deletes expired drill namespaces, and finished pods and
Jobs older than an age in the namespaces the policy names (finished pods left behind bloat etcd).

It only ever touches a namespace that carries ``app.kubernetes.io/managed-by=lifeboat``, starts
with the configured prefix and whose ``lifeboat.io/expires-at`` has passed; and only pods and Jobs
that are finished, in a configured namespace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from kubernetes.client.exceptions import ApiException

from drills.scratch.common import ScratchError
from drills.scratch.kubernetes.api import KubernetesApi, absent, make_api_client
from drills.scratch.kubernetes.manifests import EXPIRES_AT, MANAGED_BY
from policies.model import KubernetesScratch

log = structlog.get_logger(__name__)
FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass
class JanitorReport:
    """What the janitor removed (or would remove, in a dry run), by kind."""

    namespaces: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def items(self) -> list[str]:
        return [
            *(f"namespace {name}" for name in self.namespaces),
            *(f"pod {name}" for name in self.pods),
            *(f"job {name}" for name in self.jobs),
        ]

    def counts(self) -> dict[str, int]:
        return {"namespaces": len(self.namespaces), "pods": len(self.pods), "jobs": len(self.jobs)}


def expired(namespace: Any, *, prefix: str, now: float) -> bool:
    """Ours (prefix + managed-by label) and past its expires-at; a missing or bad expiry is never expired."""
    labels = namespace.metadata.labels or {}
    if not namespace.metadata.name.startswith(prefix) or labels.get(MANAGED_BY) != "lifeboat":
        return False
    try:
        return int(labels.get(EXPIRES_AT, "")) < now
    except ValueError:
        return False


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


def _age_seconds(moment: datetime | None, now: float) -> float:
    return now - moment.timestamp() if moment is not None else 0.0


def pod_finished_at(pod: Any) -> datetime | None:
    """When a Succeeded or Failed pod's last container terminated; None while it is not finished."""
    if pod.status is None or pod.status.phase not in FINISHED_PHASES:
        return None
    ends = [
        status.state.terminated.finished_at
        for status in (pod.status.container_statuses or [])
        if status.state and status.state.terminated and status.state.terminated.finished_at
    ]
    return max(ends) if ends else pod.metadata.creation_timestamp


def job_finished_at(job: Any) -> datetime | None:
    """A Job's completionTime, or the time of its Complete/Failed condition; None while it runs."""
    status = job.status
    if status is None:
        return None
    if status.completion_time is not None:
        return status.completion_time
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.last_transition_time or job.metadata.creation_timestamp
    return None


def clean_leftovers(settings: KubernetesScratch, *, dry_run: bool = False) -> list[str]:
    """The janitor on the configured cluster; returns what went (or would go, in a dry run)."""
    return run_janitor(KubernetesApi(make_api_client(settings)), settings, dry_run=dry_run).items()


def run_janitor(
    api: KubernetesApi, settings: KubernetesScratch, *, dry_run: bool = False, clock: Callable[[], float] = time.time
) -> JanitorReport:
    """Delete (unless ``dry_run``) expired drill namespaces and old finished pods and Jobs."""
    now = clock()
    report = JanitorReport()
    try:
        _expired_namespaces(api, settings, now, dry_run, report)
        for namespace in settings.janitor_namespaces:
            _finished_pods(api, namespace, settings.finished_max_age.total_seconds(), now, dry_run, report)
            _finished_jobs(api, namespace, settings.finished_max_age.total_seconds(), now, dry_run, report)
    except ApiException as exc:
        raise ScratchError(f"kubernetes janitor: {exc.status} {exc.reason}") from exc
    log.info("janitor.kubernetes", dry_run=dry_run, **report.counts())
    return report


def _expired_namespaces(
    api: KubernetesApi, settings: KubernetesScratch, now: float, dry_run: bool, report: JanitorReport
) -> None:
    for namespace in api.core.list_namespace(label_selector=f"{MANAGED_BY}=lifeboat").items:
        if not expired(namespace, prefix=settings.namespace_prefix, now=now):
            continue
        name = _name(namespace)
        if not dry_run:
            absent(partial(api.core.delete_namespace, name, propagation_policy="Foreground"))
        report.namespaces.append(name)


def _finished_pods(
    api: KubernetesApi, namespace: str, max_age: float, now: float, dry_run: bool, report: JanitorReport
) -> None:
    for pod in api.core.list_namespaced_pod(namespace).items:
        finished = pod_finished_at(pod)
        if finished is None or _age_seconds(finished, now) <= max_age:
            continue
        name = _name(pod)
        if not dry_run:
            absent(partial(api.core.delete_namespaced_pod, name, namespace))
        report.pods.append(f"{namespace}/{name}")


def _finished_jobs(
    api: KubernetesApi, namespace: str, max_age: float, now: float, dry_run: bool, report: JanitorReport
) -> None:
    for job in api.batch.list_namespaced_job(namespace).items:
        finished = job_finished_at(job)
        if finished is None or _age_seconds(finished, now) <= max_age:
            continue
        name = _name(job)
        if not dry_run:  # Background: the Job's pods go with it
            absent(partial(api.batch.delete_namespaced_job, name, namespace, propagation_policy="Background"))
        report.jobs.append(f"{namespace}/{name}")
