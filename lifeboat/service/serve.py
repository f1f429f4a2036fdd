"""``LifeboatService``: the scheduler, its jobs (``lifeboat.service.jobs``), the HTTP endpoints and
the signal handling of ``lifeboat serve``.

Signals (``serve_forever``):

- SIGHUP re-reads the policy file. A file with errors is rejected (``policy.reload_rejected`` lists
  every error) and the old policy and schedule keep running. ``state`` and ``service.listen`` take
  effect at the next start only.
- SIGTERM / SIGINT: stop taking jobs; running jobs get ``service.stop_timeout`` to finish; then the
  ones still running are aborted (a second signal aborts at once; ``lifeboat.service.abort`` says
  what aborting does). ``serve`` then exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from backup.repository import Repository, open_repository
from lifeboat.logs import Redactor
from lifeboat.metrics import MetricsServer, metrics_registry
from lifeboat.notify import policy_secrets
from lifeboat.operations import Operations, refresh_inventory
from lifeboat.service import ServiceError
from lifeboat.service.abort import ABORT_GRACE_SECONDS, JobAborted, RunningJob, abort_jobs
from lifeboat.service.cron import cron_trigger
from lifeboat.service.instance_lock import instance_lock
from lifeboat.service.jobs import JOB_RUNNERS, JobSpec, job_specs
from lifeboat.state import StateError
from lifeboat.state.history import RunHistory
from lifeboat.state.source_locks import SourceLocks
from policies.errors import ConfigError, LifeboatError
from policies.loader import load_policy
from policies.model import Policy

log = structlog.get_logger("lifeboat.service")  # the logger name the service's logs have always shown

JOB_THREADS = 8  # jobs of different sources run side by side; a source's own jobs wait for its lock
SIGNAL_POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LifeboatService:
    """The scheduler, its jobs, the HTTP endpoints and the signal handling of ``lifeboat serve``.

    ``start()`` / ``stop()`` for use in-process (tests, the demo); ``serve_forever()`` adds the
    signals and blocks. ``run_now(job_id)`` starts a job now, outside its schedule.
    """

    def __init__(self, config_path: Path, *, redactor: Redactor | None = None, policy: Policy | None = None) -> None:
        """Raises ConfigError when the policy file is invalid."""
        self.config_path = config_path
        self.redactor = redactor or Redactor()
        self.policy = policy or load_policy(config_path)
        self.redactor.add(policy_secrets(self.policy))
        self.policy_loaded = datetime.now(UTC)
        self.reload_error: str | None = None
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(JOB_THREADS)}, daemon=True
        )
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._specs: dict[str, JobSpec] = {}
        self._grace = 0
        self._running: dict[str, RunningJob] = {}
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._signals: deque[int] = deque()
        self._owns_process = False  # serve_forever: the children of this process are the jobs' own
        self._resources = contextlib.ExitStack()
        self._history: RunHistory | None = None
        self._locks: SourceLocks | None = None
        self._http: MetricsServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def history(self) -> RunHistory:
        if self._history is None:
            raise ServiceError("the service is not started")
        return self._history

    @property
    def url(self) -> str:
        """Where ``/healthz`` and ``/metrics`` answer."""
        if self._http is None:
            raise ServiceError("the service is not started")
        return self._http.url

    def start(self) -> None:
        """Claim the state DB, mark runs of dead processes interrupted, serve HTTP, start the scheduler.

        Raises ServiceError (another service uses this state DB), StateError, ListenError."""
        policy = self.policy
        try:
            self._resources.enter_context(instance_lock(policy.state))
            self._history = self._resources.enter_context(RunHistory.open(policy.state))
            self._locks = SourceLocks(self._history.lock_dir)
            self._http = MetricsServer(
                policy.service.listen, metrics_registry(self._history, lambda: self.policy), self.health
            )
            self._http.start()
            self._resources.callback(self._http.stop)
        except BaseException:
            self._resources.close()
            raise
        threading.Thread(target=self._refresh_inventory, name="lifeboat-inventory", daemon=True).start()
        told = Operations(policy, self._history, self._locks, redact=self.redactor.text, origin="service")
        threading.Thread(target=told.tell_of_damage, name="lifeboat-state-damage", daemon=True).start()
        self._schedule(policy)
        self._scheduler.start()
        log.info("service.started", url=self._http.url, state=str(policy.state), jobs=self.jobs())
        if not self._specs:
            log.warning(
                "service.no_jobs",
                advice="give sources, restore points, repository.prune/check or drills a schedule",
            )

    def stop(self) -> bool:
        """Stop taking jobs, let the running ones finish up to ``service.stop_timeout``, abort the rest
        (see ``lifeboat.service.abort``); True when every job has ended, False when one could not be unwound."""
        if self._stopping.is_set():
            return True
        self._stopping.set()
        timeout = self.policy.service.stop_timeout.total_seconds()
        log.info("service.stopping", running=self.running(), stop_timeout=timeout)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        clean = True
        if not self._wait_for_jobs(timeout):
            self._abort_jobs()
            clean = self._wait_for_jobs(ABORT_GRACE_SECONDS, abort_on_signal=False)
        if self._history is not None:
            left = self._history.interrupt_own_runs("interrupted: the service stopped before the run could be unwound")
            if left:
                log.error("service.abort_incomplete", runs=left, jobs=self.running())
        if clean:
            self._resources.close()
        log.info("service.stopped", clean=clean)
        return clean

    def serve_forever(self, *, run_now: Iterable[str] = ()) -> bool:
        """Start, handle signals until SIGTERM/SIGINT, stop. Returns ``stop()``'s answer.

        Must run in the main thread (signal handlers). Raises ServiceError when the scheduler
        stopped by itself (after stopping the rest), so that a supervisor restarts the service."""
        handled = (*STOP_SIGNALS, signal.SIGHUP)
        previous = {number: signal.signal(number, self._on_signal) for number in handled}
        self._owns_process = True
        try:
            self.start()
            for job_id in run_now:
                self.run_now(job_id)
            while (number := self._next_signal()) not in STOP_SIGNALS:
                if number == signal.SIGHUP:
                    self.reload()
                elif not self._scheduler_alive():
                    self.stop()
                    raise ServiceError("the scheduler stopped by itself; the service stopped too")
            return self.stop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, number: int, frame: Any) -> None:
        self._signals.append(number)  # nothing else here: a signal handler must not take locks

    def _next_signal(self) -> int | None:
        """The next signal received, or None after a while (so the caller can look around)."""
        deadline = time.monotonic() + 5.0
        while not self._signals and time.monotonic() < deadline:
            time.sleep(SIGNAL_POLL_SECONDS)
        return self._signals.popleft() if self._signals else None

    # ---- the schedule ----------------------------------------------------------------------------

    def _schedule(self, policy: Policy) -> None:
        """Make the scheduler's jobs those of ``policy``; a job whose schedule did not change keeps its next run."""
        specs = {spec.id: spec for spec in job_specs(policy)}
        grace = int(policy.service.misfire_grace.total_seconds())
        for job in self._scheduler.get_jobs():
            if job.id not in specs:
                job.remove()
        for spec in specs.values():
            if self._specs.get(spec.id) == spec and grace == self._grace and self._scheduler.get_job(spec.id):
                continue
            self._scheduler.add_job(
                self._execute,
                trigger=cron_trigger(spec.schedule),
                args=[spec.id],
                id=spec.id,
                name=spec.id,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=grace,
            )
        self._specs, self._grace = specs, grace

    def jobs(self) -> list[dict[str, Any]]:
        """The scheduled jobs: id, schedule and next run time (UTC)."""
        found = []
        for job in self._scheduler.get_jobs():
            spec = self._specs.get(job.id)
            upcoming = getattr(job, "next_run_time", None)
            found.append(
                {
                    "id": job.id,
                    "schedule": spec.schedule if spec else None,
                    "next_run": upcoming.astimezone(UTC).isoformat() if upcoming else None,
                }
            )
        return found

    def job_ids(self) -> list[str]:
        return [spec.id for spec in job_specs(self.policy)]

    def run_now(self, job_id: str) -> None:
        """Start job ``job_id`` now (its schedule then goes on as before); raises ServiceError if unknown."""
        if job_id not in self._specs:
            raise ServiceError(f"no job '{job_id}'; scheduled: {', '.join(self._specs) or 'none'}")
        self._scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))
        log.info("job.run_now", job=job_id)

    def reload(self) -> bool:
        """Re-read the policy file; on success replace the schedule, else keep the old one. True if reloaded."""
        try:
            policy = load_policy(self.config_path)
        except ConfigError as exc:
            errors = [self.redactor.text(f"{issue.path or exc.file}: {issue.message}") for issue in exc.issues]
            self.reload_error = "; ".join(errors)
            log.error("policy.reload_rejected", file=str(self.config_path), errors=errors, kept="the running policy")
            return False
        self.redactor.add(policy_secrets(policy))
        for setting, running, wanted in (
            ("state", self.policy.state, policy.state),
            ("service.listen", self.policy.service.listen, policy.service.listen),
        ):
            if running != wanted:
                log.warning("policy.restart_needed", setting=setting, running=str(running), new=str(wanted))
        self.policy, self.policy_loaded, self.reload_error = policy, datetime.now(UTC), None
        self._schedule(policy)
        log.info("policy.reloaded", file=str(self.config_path), jobs=self.jobs())
        return True

    def _on_skipped(self, event: JobEvent) -> None:
        why = "missed its time by more than service.misfire_grace" if event.code == EVENT_JOB_MISSED else "still running"
        log.warning("job.skipped", job=event.job_id, reason=why)

    # ---- running jobs ----------------------------------------------------------------------------

    def _execute(self, job_id: str) -> None:
        """A scheduled job, on an executor thread: run its operation; never raise into the scheduler."""
        spec = self._specs.get(job_id)
        if spec is None or self._stopping.is_set():
            return
        job = RunningJob(spec, threading.get_ident())
        with self._running_lock:
            self._running[job_id] = job
        log.info("job.started", job=job_id)
        try:
            try:
                self._run(spec, job)
            finally:
                job.finish()
        except JobAborted:
            log.warning("job.aborted", job=job_id, seconds=round(time.monotonic() - job.started, 3))
        except LifeboatError as exc:
            log.error("job.failed", job=job_id, error=self.redactor.text(str(exc)))
        except Exception:  # a bug: recorded as failed by the operation; the scheduler must go on
            log.exception("job.crashed", job=job_id)
        else:
            log.info("job.finished", job=job_id, seconds=round(time.monotonic() - job.started, 3))
        finally:
            with self._running_lock:
                self._running.pop(job_id, None)

    def _run(self, spec: JobSpec, job: RunningJob) -> None:
        policy = self.policy  # a reload during the job does not change it under its feet
        assert self._history is not None and self._locks is not None
        operations = Operations(
            policy, self._history, self._locks, redact=self.redactor.text, origin="service", aborting=self._aborting
        )
        with contextlib.ExitStack() as opened:

            def repository() -> Repository:
                return opened.enter_context(open_repository(policy.repository))

            JOB_RUNNERS[spec.kind](operations, spec, repository, job.progress)

    def running(self) -> list[str]:
        with self._running_lock:
            return sorted(self._running)

    def _wait_for_jobs(self, timeout: float, *, abort_on_signal: bool = True) -> bool:
        """Wait until no job runs (True) or ``timeout`` passed / another stop signal came (False)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            if abort_on_signal and any(number in STOP_SIGNALS for number in self._signals):
                self._signals.clear()
                log.warning("service.abort_now", reason="a second stop signal")
                return False
            time.sleep(0.1)
        return True

    def _abort_jobs(self) -> None:
        with self._running_lock:
            jobs = list(self._running.values())
        log.warning("service.aborting", jobs=[job.spec.id for job in jobs])
        stopped = abort_jobs(jobs, aborting=self._aborting, stop_children=self._owns_process)
        if stopped:
            log.info("service.children_stopped", pids=stopped)

    # ---- health and inventory --------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """For ``/healthz``: healthy when the scheduler runs and the state DB takes writes."""
        scheduler = "stopping" if self._stopping.is_set() else "running" if self._scheduler_alive() else "stopped"
        state = "writable"
        try:
            self.history.probe_write()
        except (StateError, ServiceError) as exc:
            state = f"not writable: {exc}"
        healthy = scheduler == "running" and state == "writable"
        return healthy, {
            "status": "ok" if healthy else "unhealthy",
            "scheduler": scheduler,
            "state_db": state,
            "jobs": self.jobs(),
            "running": self.running(),
            "policy": {
                "file": str(self.config_path),
                "loaded": self.policy_loaded.isoformat(),
                "reload_error": self.reload_error,
            },
        }

    def _scheduler_alive(self) -> bool:
        thread = getattr(self._scheduler, "_thread", None)  # BackgroundScheduler's loop
        return bool(self._scheduler.running and (thread is None or thread.is_alive()))

    def _refresh_inventory(self) -> None:
        """Count the repository's snapshots at start (for /metrics and status); a failure is only logged."""
        try:
            with open_repository(self.policy.repository) as repository:
                refresh_inventory(self.history, repository, self.policy.sources)
        except LifeboatError as exc:
            log.warning("inventory.not_refreshed", error=self.redactor.text(str(exc)))
