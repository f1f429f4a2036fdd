"""What Lifeboat runs, written once for the CLI and the service: back up one source, prune, check,
and a drill with its reports and notifications (DESIGN sections 7, 8).

Every operation is recorded in the state DB (``lifeboat.state``), by one context manager
(``Operations.recorded_run``): a row is written as ``running`` first and finished as ok / failed /
suspicious / interrupted (drills: their verdict, PASS / FAIL / ERROR) with its figures, snapshot id
and error (secrets masked). A source's backup, prune and drill hold that
source's lock (``SourceLocks``: this process and, through a file lock, every other Lifeboat process
on the machine); across machines the repository's locks do that job.

Failures notify at most once per incident (``backup-failure``, ``check-failure``, ``suspicious``):
the first failure opens the incident in the state DB and is sent to every notifier whose ``on``
lists the event; repeats only count; the next success closes it and sends a recovery note to the
same notifiers. A delivery that failed everywhere is tried again at the next repeat. Drills notify
every run, as the drill's ``notify`` list says. What each notification says: ``lifeboat.notify.wording``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from backup.jobs import BackupResult, merge_parts, run_backup, run_part_backup
from backup.repository.locks import remove_locks
from backup.repository.maintenance import CheckReport, PruneReport
from backup.repository.maintenance import check as check_repository
from backup.repository.maintenance import prune as prune_repository
from backup.repository.parts import PartOf
from backup.repository.repository import Repository
from backup.repository.restore_points import RestorePoint, build_restore_point, write_restore_point
from backup.sources import prune_hooks
from backup.sources.base import Progress
from drills.model import DrillRun, Status
from lifeboat import __version__
from lifeboat.forecast import forecasts
from lifeboat.notify import Notification, build_notifiers, notify, notify_all, ping_job
from lifeboat.notify.base import NOTIFICATIONS_ENV
from lifeboat.notify.ping import job_id
from lifeboat.notify.wording import (
    PROBLEMS_KEPT,
    backup_failure_message,
    check_failure_message,
    drill_notification,
    recovery_message,
    restore_point_failure_message,
    rto_forecast_message,
    state_damaged_message,
    suspicious_message,
)
from lifeboat.service.abort import JobAborted
from lifeboat.state.history import RunHistory
from lifeboat.state.records import REPOSITORY_NAME, SCRATCH_NAME, RunKind, RunStatus, utc_now
from lifeboat.state.source_locks import SourceLocks
from policies.errors import LifeboatError
from policies.model import Policy, reveal

if TYPE_CHECKING:
    from lifeboat.executor import KubernetesBackupExecutor

log = structlog.get_logger(__name__)
# The executor kinds whose backups run outside this process (the service submits them); "local" runs here.
REMOTE_EXECUTORS: dict[str, str] = {"kubernetes": "lifeboat.executor:KubernetesBackupExecutor"}

HISTORY_FOR_CHARTS = 30  # earlier drill runs drawn in a report's trend charts
RepositoryOpener = Callable[[], Repository]
FailureHook = Callable[[int, str], None]  # (run id, masked error) of a failed run: opens its incident


@dataclass
class RecordedRun:
    """A run being recorded in the state DB (``Operations.recorded_run``): its id, its clock, its end."""

    history: RunHistory
    id: int
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    status: RunStatus | Status | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def finish(
        self,
        status: RunStatus | Status,
        *,
        figures: dict[str, Any] | None = None,
        snapshot_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record how the run ended; ``error`` must already have its secrets masked."""
        self.finished = True  # set first: a failure to record the end is not the run's own failure
        self.status, self.error = status, error
        self.history.finish_run(self.id, status, figures=figures, snapshot_id=snapshot_id, error=error)


@dataclass
class RestorePointRun:
    """``backup run --restore-point``: every member's backup result or error, and the restore point
    committed (None when even its manifest could not be written: ``commit_error`` says why)."""

    name: str
    results: list[BackupResult]
    errors: dict[str, str]
    point: RestorePoint | None
    commit_error: str | None = None


@dataclass
class Operations:
    """The recorded operations, for one policy; see the module docstring.

    ``origin`` says who started the runs (``cli`` or ``service``); ``redact`` masks secrets in error
    texts before they are stored or sent; once ``aborting`` is set, failures are recorded as
    ``interrupted`` (a job killed at shutdown did not fail) and notify nobody.
    """

    policy: Policy
    history: RunHistory
    locks: SourceLocks
    redact: Callable[[str], str] = str
    origin: str = "cli"
    aborting: threading.Event = field(default_factory=threading.Event)
    backup_executor: KubernetesBackupExecutor | None = None  # built from the policy when needed; tests pass one

    @property
    def lock_wait(self) -> float:
        """How long a run waits for a busy source: the service's misfire grace (a job later than
        that would not have been started at all)."""
        return self.policy.service.misfire_grace.total_seconds()

    @property
    def stale_after(self) -> float:
        return self.policy.repository.lock_stale_after.total_seconds()

    # ---- backup ----------------------------------------------------------------------------------

    def backup(self, name: str, *, repository: RepositoryOpener, progress: Progress | None = None) -> BackupResult:
        """Snapshot source ``name`` under its source lock; return the result. In the service with
        ``executor.kind: kubernetes`` a Job takes the snapshot (``lifeboat.executor``), recorded alike.

        Raises what ``run_backup`` raises (SourceError, StoreError...), SourceBusy, JobAborted:
        recorded before they propagate, and a failure notified as a ``backup-failure`` incident.
        """
        return self._recorded_backup(
            name, repository, lambda repo, run_id: self._snapshot(repo, name, run_id=run_id, progress=progress)
        )

    def merge_parts(self, name: str, run: str, *, repository: RepositoryOpener) -> BackupResult:
        """Complete sharded run ``run`` of ``name`` whose parts were taken apart (``backup run --shard``):
        merge them into one snapshot (``backup.jobs.merge_parts``), recorded and notified as ONE backup
        run of the source, as ``backup`` records one. Raises what ``backup`` raises."""
        settings = self.policy.sources[name]
        return self._recorded_backup(
            name, repository, lambda repo, _: merge_parts(repo, name, settings, run, stale_after=self.stale_after)
        )

    def backup_part(
        self, name: str, part: PartOf, *, repository: RepositoryOpener, progress: Progress | None = None
    ) -> BackupResult:
        """Take one shard's part of a sharded run (``backup.jobs.run_part_backup``). Neither recorded nor
        notified, and not under the source lock (the shards of a run may run side by side here): a part
        is no snapshot; the merge that completes the run is the run that is recorded and notified."""
        settings = self.policy.sources[name]
        return run_part_backup(repository(), name, settings, part, stale_after=self.stale_after, progress=progress)

    def backup_restore_point(self, name: str, *, repository: RepositoryOpener) -> RestorePointRun:
        """Snapshot every member source of restore point ``name`` started together (each one a
        recorded backup run of its source, as ``backup`` runs it), then commit the restore point
        naming them (``backup.repository.restore_points``): ``complete`` when every member committed,
        else ``failed`` naming the members that failed; the good ones stay ordinary snapshots.

        Recorded as a ``restore-point`` run of ``name`` (ok when complete, else failed naming why;
        figures: the restore point's summary). Each member's failure notifies once through its own
        ``backup-failure`` incident; a manifest that could not be written opens the restore point's
        own ``backup-failure`` incident (name ``restore point NAME``), closed by the next complete one.

        Never raises for a member's failure (it is in ``errors``); a manifest that cannot be written
        is ``commit_error``. Raises JobAborted."""
        label = f"restore point {name}"

        def not_committed(run_id: int, error: str) -> None:
            self._open_incident("backup-failure", label, run_id, restore_point_failure_message(name, error))

        with self.recorded_run(RunKind.RESTORE_POINT, name, on_failure=not_committed) as run:
            taken = self._take_restore_point(name, repository=repository)
            figures: dict[str, Any] = {"seconds": round(run.seconds, 3), "errors": taken.errors}
            if taken.point is not None:
                figures |= {"restore_point": taken.point.summary()}
            if taken.commit_error is not None:
                run.finish(RunStatus.FAILED, figures=figures, error=taken.commit_error)
                not_committed(run.id, taken.commit_error)
            elif taken.point is not None and taken.point.status != "complete":
                failed = "; ".join(f"{member}: {taken.errors.get(member, 'failed')}" for member in taken.point.failed)
                run.finish(RunStatus.FAILED, figures=figures, snapshot_id=taken.point.id, error=f"members failed: {failed}")
            else:
                run.finish(RunStatus.OK, figures=figures, snapshot_id=taken.point.id if taken.point else None)
                self._close_incident("backup-failure", label, run.id)
        return taken

    def _take_restore_point(self, name: str, *, repository: RepositoryOpener) -> RestorePointRun:
        """``backup_restore_point``'s work: the members' backups started together, then the manifest."""
        members = self.policy.restore_points[name].sources
        started = datetime.now(UTC)
        with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix=f"restore-point-{name}") as pool:
            futures = {member: pool.submit(self.backup, member, repository=repository) for member in members}
        results: dict[str, BackupResult] = {}
        errors: dict[str, str] = {}
        for member, future in futures.items():
            error = future.exception()
            if error is None:
                results[member] = future.result()
            elif isinstance(error, LifeboatError):
                errors[member] = self.redact(str(error))
            else:
                raise error
        point = build_restore_point(
            name,
            started=started,
            sources=members,
            headers={member: result.header for member, result in results.items()},
            errors=errors,
        )
        try:
            repo = repository()
            with repo.lock("shared", f"restore point {name}", stale_after=self.stale_after):
                write_restore_point(repo, point)
        except LifeboatError as exc:
            message = self.redact(str(exc))
            log.error("restore_point.not_committed", restore_point=name, error=message)
            return RestorePointRun(name, list(results.values()), errors, None, message)
        log.info("restore_point.committed", restore_point=point.id, status=point.status, spread=point.spread_seconds)
        return RestorePointRun(name, list(results.values()), errors, point)

    def _recorded_backup(
        self, name: str, repository: RepositoryOpener, take: Callable[[Repository, int], BackupResult]
    ) -> BackupResult:
        """``take(repository, run id)`` under the source lock, recorded as a backup run of ``name``,
        with the incidents of ``backup-failure`` and ``suspicious`` opened or closed."""

        def failed(run_id: int, error: str) -> None:
            self._open_incident("backup-failure", name, run_id, backup_failure_message(name, error))

        with self.recorded_run(RunKind.BACKUP, name, on_failure=failed) as run:
            with self.locks.hold([name], purpose=f"backup {name}", wait=self.lock_wait):
                repo = repository()
                result = take(repo, run.id)
            status = RunStatus.SUSPICIOUS if result.anomalies else RunStatus.OK
            run.finish(status, figures=result.as_dict(), snapshot_id=result.header.id)
        self._refresh_inventory(repo, [name])
        self._close_incident("backup-failure", name, run.id)
        if result.anomalies:
            self._open_incident("suspicious", name, run.id, suspicious_message(result))
        else:
            self._close_incident("suspicious", name, run.id)
        return result

    def _snapshot(self, repo: Repository, name: str, *, run_id: int, progress: Progress | None) -> BackupResult:
        """Snapshot ``name`` here, or, for the service with ``executor.kind: kubernetes``, in a Job (or
        in the shard Jobs of ``executor.kubernetes.shards``, whose parts are merged here).

        Only the service submits Jobs: the Job's pod runs ``lifeboat backup run`` (origin ``cli``)
        with the same policy, and must back up in its own process rather than submit another Job."""
        elsewhere = REMOTE_EXECUTORS.get(self.policy.executor.kind)
        if elsewhere is not None and self.origin == "service":
            module, _, attribute = elsewhere.partition(":")  # loads the Kubernetes client: only here
            executor = self.backup_executor or getattr(importlib.import_module(module), attribute)(self.policy)
            return executor.backup(name, run_id=run_id, progress=progress, repository=repo)
        return run_backup(repo, name, self.policy.sources[name], stale_after=self.stale_after, progress=progress)

    # ---- prune and check -------------------------------------------------------------------------

    def prune(self, *, repository: RepositoryOpener, dry_run: bool = False, forget_damaged: bool = False) -> PruneReport:
        """Apply every source's retention and delete unreferenced chunks, holding every source's lock;
        ``forget_damaged`` also forgets snapshots whose manifest is damaged (kept otherwise).

        A dry run changes nothing and is neither locked nor recorded. Raises PruneRefused,
        StoreError, SourceBusy, JobAborted (recorded)."""
        retention = {name: source.retention for name, source in self.policy.sources.items()}
        points = {name: point.retention for name, point in self.policy.restore_points.items()}
        grace, stale_after = self.policy.repository.prune.grace, self.stale_after
        hooks = prune_hooks()  # what each kind keeps outside chunks (ClickHouse native backups) and may go
        if dry_run:
            return prune_repository(
                repository(),
                retention,
                grace=grace,
                dry_run=True,
                stale_after=stale_after,
                hooks=hooks,
                forget_damaged=forget_damaged,
                restore_points=points,
            )
        with self.recorded_run(RunKind.PRUNE, REPOSITORY_NAME) as run:
            with self.locks.hold(self.policy.sources, purpose="prune", wait=self.lock_wait):
                repo = repository()
                expected = self._sources_with_snapshots(repo)
                report = prune_repository(
                    repo,
                    retention,
                    grace=grace,
                    dry_run=False,
                    expected_sources=expected,
                    stale_after=stale_after,
                    hooks=hooks,
                    forget_damaged=forget_damaged,
                    restore_points=points,
                )
            run.finish(RunStatus.OK, figures=prune_figures(report, run.seconds))
        self._refresh_inventory(repo)
        return report

    def check(self, *, repository: RepositoryOpener, read_data: float = 0.0) -> CheckReport:
        """Check the repository (re-reading ``read_data`` of its chunks) under a shared repository lock.

        Problems found are a failed run and a ``check-failure`` incident; the report is returned
        either way. Raises StoreError, RepositoryLocked, JobAborted (recorded)."""

        def failed(run_id: int, error: str) -> None:
            self._open_incident("check-failure", REPOSITORY_NAME, run_id, check_failure_message([error]))

        with self.recorded_run(RunKind.CHECK, REPOSITORY_NAME, on_failure=failed) as run:
            repo = repository()
            with repo.lock("shared", "check", stale_after=self.stale_after):
                report = check_repository(repo, read_data=read_data, stale_after=self.stale_after)
            figures = check_figures(report, run.seconds)
            problems = [self.redact(problem.message) for problem in report.problems]
            error = None if report.ok else f"{len(problems)} problem(s): " + "; ".join(problems[:3])
            run.finish(RunStatus.OK if report.ok else RunStatus.FAILED, figures=figures, error=error)
        if report.ok:
            self._close_incident("check-failure", REPOSITORY_NAME, run.id)
        else:
            self._open_incident("check-failure", REPOSITORY_NAME, run.id, check_failure_message(problems))
        return report

    # ---- drill -----------------------------------------------------------------------------------

    def drill(
        self,
        name: str,
        *,
        repository: RepositoryOpener,
        report_dir: Path | None = None,
        notify: bool = True,
        only_checks: bool = False,
    ) -> DrillRun:
        """Run drill ``name`` holding the locks of its sources; write its reports (under ``report_dir``,
        default ``<state dir>/reports/<drill>``), store it in the repository, notify the drill's
        notifiers (unless ``notify`` is false); return the run. ``only_checks``: restore, verify and
        the checks only (``drill run --only-checks``). Raises ConfigError, StoreError,
        SourceBusy, JobAborted (recorded as ERROR, or interrupted)."""
        # the drills' code is imported by the commands that run one, not by every backup (issue 22)
        from drills.evidence import manifest_digests
        from drills.history import load_history, store_report
        from drills.report import write_reports
        from drills.runner import new_run_id, run_drill
        from drills.scratch import make_scratch

        drill = self.policy.drills[name]
        with self.recorded_run(RunKind.DRILL, name, failed=Status.ERROR) as recorded:
            with self.locks.hold(drill.sources, purpose=f"drill {name}", wait=self.lock_wait):
                repo = repository()
                scratch = make_scratch(self.policy.scratch, new_run_id(utc_now()), drill=name, policy=self.policy)
                run = run_drill(self.policy, name, repository=repo, scratch=scratch, only_checks=only_checks)
            history = load_history(repo, name, limit=HISTORY_FOR_CHARTS)
            directory = (report_dir or self.policy.state.parent / "reports" / name) / run.run_id
            run.report_files = {kind: str(path) for kind, path in write_reports(run, directory, history).items()}
            store_report(repo, run)
            manifests = manifest_digests(repo, run)
            evidence = self._write_evidence(repo, run, manifests)
            single = run.sources[0].snapshot if len(run.sources) == 1 else None
            figures = {**drill_figures(run, manifests), "evidence": evidence}
            recorded.finish(run.verdict, figures=figures, snapshot_id=single)
        self.warn_of_rto_forecast(name, run, recorded.id)
        if notify:
            # A failed delivery is logged by the notifier and never changes the verdict.
            notify_all(
                {notifier: self.policy.notify[notifier] for notifier in drill.notify},
                drill_notification(run, history=history),
            )
        return run

    def _write_evidence(self, repo: Repository, run: DrillRun, manifests: dict[str, dict[str, Any]]) -> str:
        """Write the run's signed evidence record (``drills.evidence``); return its key, ``off`` without
        a signing key, or ``not written: <why>`` (logged as an error: the drill's verdict stands)."""
        from drills.evidence import build_record, load_signing_key, policy_sha256, scratch_identity, write_record

        secret = self.policy.evidence.signing_key
        if secret is None:
            log.info("evidence.off", drill=run.drill, reason="no evidence.signing_key in the policy")
            return "off"
        try:
            key = load_signing_key(reveal(secret) or "")
            record = build_record(
                run,
                policy_hash=policy_sha256(self.policy),
                manifests=manifests,
                scratch=scratch_identity(self.policy, run.run_id),
                version=__version__,
            )
            stored = write_record(repo, record, key)
        except LifeboatError as exc:
            error = self.redact(str(exc))
            log.error("evidence.not_written", drill=run.drill, run_id=run.run_id, error=error)
            return f"not written: {error}"
        log.info("evidence.written", drill=run.drill, run_id=run.run_id, key=stored)
        return stored

    def warn_of_rto_forecast(self, name: str, run: DrillRun, run_id: int) -> None:
        """Open the ``rto-forecast`` incident of drill ``name`` (notified once) when next month's forecast
        RTO exceeds the objective while the run just measured still meets it; close it when the forecast
        is back under. A run over the objective already is the drill's own failure, told by the drill."""
        forecast = forecasts(self.policy, self.history, now=utc_now()).get(name)
        if forecast is None or forecast.seconds is None:
            return
        measured = run.rto_seconds
        if forecast.over_objective and measured is not None and measured <= forecast.objective_seconds:
            self._open_incident("rto-forecast", name, run_id, rto_forecast_message(forecast, measured))
        elif not forecast.over_objective:
            self._close_incident("rto-forecast", name, run_id)

    # ---- janitor ---------------------------------------------------------------------------------

    def janitor(self, *, dry_run: bool = False, repository: RepositoryOpener | None = None) -> list[str]:
        """Clean up after dead drill runs (``drills.scratch.clean_leftovers``) and, given the
        ``repository``, remove the stale repository locks of dead runs; returns what went. A dry run
        changes nothing and is not recorded. Raises what the cleanup raises (recorded); a repository
        that cannot be reached is a warning (the scratch cleanup does not depend on it)."""
        from drills.scratch import clean_leftovers

        if dry_run:
            return clean_leftovers(self.policy.scratch, dry_run=True) + self._stale_locks(repository, dry_run=True)
        with self.recorded_run(RunKind.JANITOR, SCRATCH_NAME) as run:
            removed = clean_leftovers(self.policy.scratch) + self._stale_locks(repository, dry_run=False)
            run.finish(RunStatus.OK, figures={"removed": len(removed), "seconds": round(run.seconds, 3)})
        return removed

    def _stale_locks(self, repository: RepositoryOpener | None, *, dry_run: bool) -> list[str]:
        if repository is None:
            return []
        try:
            sweep = remove_locks(repository().store, stale_after=self.stale_after, dry_run=dry_run)
        except LifeboatError as exc:
            log.warning("janitor.locks_skipped", error=self.redact(str(exc)))
            return []
        return [f"stale repository {lock.describe()}: {reason}" for lock, reason in sweep.removed]

    # ---- recording and incidents -----------------------------------------------------------------

    @contextlib.contextmanager
    def recorded_run(
        self,
        kind: RunKind,
        name: str,
        *,
        failed: RunStatus | Status = RunStatus.FAILED,
        on_failure: FailureHook | None = None,
    ) -> Iterator[RecordedRun]:
        """Record a run of ``kind`` and ``name`` as running; the block does the work and ends with
        ``run.finish(status, ...)``. An exception out of the block before that finishes the run as
        ``failed`` (or ``interrupted``, see ``_record_failure``), calls ``on_failure(run id, masked
        error)`` unless it was an abort, and propagates. A block that ends without finishing its run
        is a bug: recorded as a failure (AssertionError). The ping notifiers following the job are
        pinged at its start and end (``_ping``)."""
        run = RecordedRun(self.history, self.history.start_run(kind, name, origin=self.origin))
        job = job_id(kind.value, name)
        self._ping(job, "start", f"{job} started (run {run.id}, {self.origin})")
        try:
            yield run
            if not run.finished:
                raise AssertionError(f"the {kind.value} run of {name} ended without recording how")
        except BaseException as exc:
            if run.finished:  # the run is recorded; what failed after that is not the run's failure
                raise
            error = self._record_failure(run, exc, failed=failed)
            if error is not None and on_failure is not None:
                on_failure(run.id, error)
            raise
        finally:
            self._ping_end(job, run)

    def _ping(self, job: str, phase: str, text: str) -> None:
        """Ping ``phase`` of ``job`` to the ping notifiers following it; never raises (a ping only warns).
        A backup running as a Kubernetes Job leaves it to the service, as it does notifications."""
        if os.environ.get(NOTIFICATIONS_ENV) == "off":
            return
        try:
            ping_job(self.policy.notify, job, phase, self.redact(text))
        except Exception:  # a bug in pinging must not change the job's outcome
            log.exception("ping.crashed", job=job, phase=phase)

    def _ping_end(self, job: str, run: RecordedRun) -> None:
        """``success`` for a run that ended ok (a drill: PASS), ``fail`` for any other end."""
        status = run.status.value if run.status is not None else "failed"
        phase = "success" if run.status in (RunStatus.OK, Status.PASS) else "fail"
        error = f": {run.error}" if run.error else ""
        self._ping(job, phase, f"{job} ended {status} after {run.seconds:.1f} s (run {run.id}){error}")

    def _record_failure(self, run: RecordedRun, exc: BaseException, *, failed: RunStatus | Status) -> str | None:
        """Finish the run as failed (or interrupted); return the masked error to notify, None for an abort."""
        figures = {"seconds": round(run.seconds, 3)}
        if isinstance(exc, JobAborted) or self.aborting.is_set():
            run.finish(RunStatus.INTERRUPTED, figures=figures, error="aborted: the service stopped")
            return None
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stopped, not failed
            run.finish(RunStatus.INTERRUPTED, figures=figures, error=type(exc).__name__)
            return None
        error = self.redact(str(exc) if isinstance(exc, LifeboatError) else f"{type(exc).__name__}: {exc}")
        run.finish(failed, figures=figures, error=error)
        return error

    def tell_of_damage(self) -> None:
        """If opening the state DB moved a damaged one aside, tell the team (once: only the process
        that moved it knows); ``lifeboat status`` keeps showing it."""
        damage = self.history.found_damaged
        if damage is not None:
            self._send("state-damaged", state_damaged_message(str(self.history.path), damage))

    def _open_incident(self, event: str, name: str, run_id: int, message: Notification) -> None:
        incident = self.history.open_incident(event, name, run_id=run_id, message=message.text[:2000])
        if incident.notified:
            log.info("incident.repeat", trigger=event, name=name, occurrences=incident.occurrences)
            return
        if any(result.ok for result in self._send(event, message)):
            self.history.mark_notified(incident.id)

    def _close_incident(self, event: str, name: str, run_id: int) -> None:
        incident = self.history.close_incident(event, name, run_id=run_id)
        if incident is None:
            return
        log.info("incident.closed", trigger=event, name=name, occurrences=incident.occurrences)
        if incident.notified:
            self._send(event, recovery_message(event, name, incident.occurrences, incident.opened.isoformat()))

    def _send(self, event: str, message: Notification) -> list[Any]:
        """Send to every notifier subscribed to ``event``; never raises (a notifier only warns).
        A backup running as a Kubernetes Job (``LIFEBOAT_NOTIFICATIONS=off``) leaves it to the service."""
        if os.environ.get(NOTIFICATIONS_ENV) == "off":
            log.info("notify.left_to_the_service", trigger=event)
            return []
        try:
            return notify(build_notifiers(self.policy.notify), event, message)
        except LifeboatError as exc:
            log.error("notify.not_sent", trigger=event, error=self.redact(str(exc)))
            return []

    # ---- the repository's inventory (for status and metrics) -------------------------------------

    def _refresh_inventory(self, repository: Repository, sources: Iterable[str] | None = None) -> None:
        """Count snapshots (and suspicious ones) per source from a listing; a listing failure is only
        logged: the run it follows has succeeded, and the counts are for status and metrics."""
        try:
            refresh_inventory(self.history, repository, self.policy.sources, only=sources)
        except LifeboatError as exc:
            log.warning("inventory.not_refreshed", error=self.redact(str(exc)))

    def _sources_with_snapshots(self, repository: Repository) -> frozenset[str]:
        """Sources that the last listings of this repository found snapshots of: prune refuses to
        run if one of them now shows none (a listing gone wrong must not look like an empty source)."""
        return frozenset(
            item.source
            for item in self.history.inventory().values()
            if item.repository == repository.config.id and item.snapshots > 0
        )


def refresh_inventory(
    history: RunHistory, repository: Repository, sources: Iterable[str], *, only: Iterable[str] | None = None
) -> dict[str, tuple[int, int]]:
    """List the repository and store ``{source: (snapshots, suspicious)}`` for ``sources`` and any other
    source found (or for the ``only`` ones); raises StoreError / IntegrityError when the listing fails."""
    wanted = list(sources if only is None else only)
    counts = dict.fromkeys(wanted, (0, 0))
    listed = [None] if only is None else wanted
    headers = [header for name in listed for header in repository.list_snapshots(name)]
    for header in headers:
        total, suspicious = counts.get(header.source, (0, 0))
        counts[header.source] = (total + 1, suspicious + (header.status == "suspicious"))
    history.set_inventory(counts, repository=repository.config.id)
    return counts


@contextlib.contextmanager
def open_operations(policy: Policy, *, redact: Callable[[str], str] = str, origin: str = "cli") -> Iterator[Operations]:
    """Operations on ``policy`` with its state DB open (a damaged one replaced, and the team told);
    closed when the block ends. Raises StateError."""
    with RunHistory.open(policy.state) as history:
        operations = Operations(policy, history, SourceLocks(history.lock_dir), redact=redact, origin=origin)
        operations.tell_of_damage()
        yield operations


# ---- figures stored with a run -----------------------------------------------------------------------


def prune_figures(report: PruneReport, seconds: float) -> dict[str, Any]:
    """The prune report without its long parts: the kept ids (counted) and the reasons."""
    long_parts = ("ok", "dry_run", "kept", "reasons", "restore_points_kept", "restore_point_reasons")
    document = {key: value for key, value in report.as_dict().items() if key not in long_parts}
    kept = {"kept": len(report.kept), "restore_points_kept": len(report.restore_points_kept)}
    return {**document, **kept, "seconds": round(seconds, 3)}


def check_figures(report: CheckReport, seconds: float) -> dict[str, Any]:
    document = report.as_dict()
    return {**document, "seconds": round(seconds, 3), "problems": document["problems"][:PROBLEMS_KEPT]}


def drill_figures(run: DrillRun, manifests: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run's verdict and RTO, per source also its restored snapshot's ``bytes`` (from ``manifests``,
    for the RTO forecast)."""
    per_source = ("source", "kind", "snapshot", "verdict", "rto_seconds", "rpo_seconds")
    document = run.to_dict()
    sizes = {name: item.get("bytes") for name, item in (manifests or {}).items()}
    return {
        "run_id": run.run_id,
        "verdict": run.verdict.value,
        "rto_seconds": document["rto_seconds"],
        "sources": [
            {**{key: source[key] for key in per_source}, "bytes": sizes.get(source["source"])}
            for source in document["sources"]
        ],
        "report_files": run.report_files,
    }
