"""The job table of ``lifeboat serve``: which jobs a policy schedules, and what each kind runs.

Jobs, built from the policy, all in UTC: ``backup:<source>`` for every source with a ``schedule``,
``prune`` and ``check`` when ``repository.prune.schedule`` / ``repository.check.schedule`` are set,
``drill:<name>`` for every drill with a ``schedule``, ``janitor`` when ``scratch.janitor.schedule`` is
set, ``restore-point:<name>`` for every restore point with a ``schedule`` (what ``backup run
--restore-point <name>`` runs: its members' backups, each a backup run of its source under that
source's lock, then the restore point, recorded as a ``restore-point`` run). Each is a cron job with ``max_instances=1``,
``coalesce=True`` and ``misfire_grace_time`` = ``service.misfire_grace``, and runs one operation of
``lifeboat.operations`` (the same code as the CLI command), recorded in the state DB. A job that
raises is logged and recorded as failed; the scheduler goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backup.repository import Repository
from lifeboat.operations import Operations
from lifeboat.state.records import REPOSITORY_NAME, SCRATCH_NAME, RunKind
from policies.errors import LifeboatError
from policies.model import Policy


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: ``backup:<source>``, ``prune``, ``check``, ``drill:<name>``, ``janitor`` or
    ``restore-point:<name>``."""

    id: str
    kind: RunKind
    name: str
    schedule: str


def job_specs(policy: Policy) -> list[JobSpec]:
    """The jobs ``policy`` schedules (sources, repository maintenance and drills without a schedule have none)."""
    specs = [
        JobSpec(f"backup:{name}", RunKind.BACKUP, name, source.schedule)
        for name, source in policy.sources.items()
        if source.schedule
    ]
    for kind, schedule in (
        (RunKind.PRUNE, policy.repository.prune.schedule),
        (RunKind.CHECK, policy.repository.check.schedule),
    ):
        if schedule:
            specs.append(JobSpec(kind.value, kind, REPOSITORY_NAME, schedule))
    specs += [
        JobSpec(f"drill:{name}", RunKind.DRILL, name, drill.schedule)
        for name, drill in policy.drills.items()
        if drill.schedule
    ]
    if policy.scratch.janitor.schedule:
        specs.append(JobSpec(RunKind.JANITOR.value, RunKind.JANITOR, SCRATCH_NAME, policy.scratch.janitor.schedule))
    specs += [
        JobSpec(f"restore-point:{name}", RunKind.RESTORE_POINT, name, point.schedule)
        for name, point in policy.restore_points.items()
        if point.schedule
    ]
    return specs


# Open the repository once per job; never creates it (only `lifeboat repo init` does): a missing one
# fails the job with RepositoryNotFound's "create it with `lifeboat repo init`", recorded and notified.
RepositoryFor = Callable[[], Repository]
JobRunner = Callable[[Operations, JobSpec, RepositoryFor, Callable[[int], None]], None]


def _run_backup(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.backup(spec.name, repository=repository, progress=progress)


def _run_prune(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.prune(repository=repository)


def _run_check(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    share = operations.policy.repository.check.read_data_subset or 0.0
    operations.check(repository=repository, read_data=share)


def _run_drill(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.drill(spec.name, repository=repository)


def _run_janitor(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.janitor(repository=repository)


def _run_restore_point(
    operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]
) -> None:
    """Recorded and notified by ``backup_restore_point``; raised here only so the job logs ``job.failed``."""
    run = operations.backup_restore_point(spec.name, repository=repository)
    if run.commit_error is not None:
        raise LifeboatError(f"restore point {spec.name} was not committed: {run.commit_error}")
    if run.point is not None and run.point.status != "complete":
        raise LifeboatError(f"restore point {spec.name} failed: members {', '.join(run.point.failed)} did not commit")


JOB_RUNNERS: dict[RunKind, JobRunner] = {
    RunKind.BACKUP: _run_backup,
    RunKind.PRUNE: _run_prune,
    RunKind.CHECK: _run_check,
    RunKind.DRILL: _run_drill,
    RunKind.JANITOR: _run_janitor,
    RunKind.RESTORE_POINT: _run_restore_point,
}
