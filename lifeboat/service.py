"""``lifeboat serve``: the scheduler service (DESIGN section 8). APScheduler 3.x is used here only.

Jobs, built from the policy, all in UTC: ``backup:<source>`` for every source with a ``schedule``,
``prune`` and ``check`` when ``repository.prune.schedule`` / ``repository.check.schedule`` are set,
``drill:<name>`` for every drill with a ``schedule``, ``janitor`` when ``scratch.janitor.schedule`` is
set. Each is a cron job with ``max_instances=1``,
``coalesce=True`` and ``misfire_grace_time`` = ``service.misfire_grace``, and runs one operation of
``lifeboat.operations`` (the same code as the CLI command), recorded in the state DB. A job that
raises is logged and recorded as failed; the scheduler goes on.

Cron expressions mean what they mean in crontab. ``CronTrigger.from_crontab`` is given them after
two corrections: APScheduler 3.x counts weekdays from Monday = 0 where crontab has Sunday = 0 (and
7), so weekdays are passed by name; and when both day-of-month and day-of-week are restricted,
crontab fires on either (an ``OrTrigger`` of the two here), where APScheduler would want both.

Signals (``serve_forever``):

- SIGHUP re-reads the policy file. A file with errors is rejected (``policy.reload_rejected`` lists
  every error) and the old policy and schedule keep running. ``state`` and ``service.listen`` take
  effect at the next start only.
- SIGTERM / SIGINT: stop taking jobs; running jobs get ``service.stop_timeout`` to finish; then the
  ones still running are aborted (a second signal aborts at once). ``serve`` then exits 0.

What "abort" does, exactly (``LifeboatService._abort_jobs``):

1. ``aborting`` is set: from then on a job's failure is recorded as ``interrupted`` and notifies
   nobody; a backup's progress callback raises ``JobAborted`` at its next block of data.
2. ``JobAborted`` (a BaseException) is raised into each running job's thread with CPython's
   ``PyThreadState_SetAsyncExc``. It lands at the thread's next Python bytecode, never inside a C
   call, so:
3. every child process of ``lifeboat serve`` (etcdctl, scratch etcd servers, ...) gets SIGTERM,
   which ends the waits on them (not when the service runs in-process: see ``_abort_jobs``).
4. The exception unwinds the job through its ``finally`` and ``with`` blocks: an uncommitted
   snapshot stays uncommitted (no manifest; its chunks are garbage for a later prune, so the
   repository stays consistent), repository lock files are deleted, a drill's scratch environment
   is torn down, the source locks are released, and the run is recorded ``interrupted``.

The jobs get ``ABORT_GRACE_SECONDS`` to unwind. A thread stuck in a C call that never returns (a
socket read without a timeout) cannot be unwound: its run is recorded ``interrupted`` anyway, and
``serve`` exits 1 without waiting for it; the kernel frees the source file locks, and a repository
lock it held goes stale and is broken after ``repository.lock_stale_after``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from backup.repository import Repository, open_repository
from lifeboat.logs import Redactor
from lifeboat.metrics import MetricsServer, metrics_registry
from lifeboat.operations import JobAborted, Operations, refresh_inventory
from lifeboat.state import StateError
from lifeboat.state.history import RunHistory
from lifeboat.state.records import REPOSITORY_NAME, SCRATCH_NAME, RunKind
from lifeboat.state.source_locks import SourceLocks
from policies.errors import ConfigError, LifeboatError
from policies.loader import load_policy
from policies.model import Policy
from policies.schedule import expand_cron

log = structlog.get_logger(__name__)

JOB_THREADS = 8  # jobs of different sources run side by side; a source's own jobs wait for its lock
ABORT_GRACE_SECONDS = 30.0  # after an abort, how long jobs get to unwind through their finally blocks
SIGNAL_POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: Sunday is 0 (and 7)


class ServiceError(LifeboatError):
    """The service cannot start or be reached."""


# ---- schedules -------------------------------------------------------------------------------------


def cron_trigger(expression: str) -> BaseTrigger:
    """The APScheduler trigger (UTC) firing when crontab would fire ``expression`` (5 fields or an
    @alias, already validated by the policy). See the module docstring for the two corrections."""
    minute, hour, day, month, weekday = expand_cron(expression).split(" ")
    weekdays = _weekday_names(weekday)
    if not day.startswith("*") and not weekday.startswith("*"):
        return OrTrigger(
            [
                CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone=UTC),
                CronTrigger.from_crontab(f"{minute} {hour} * {month} {weekdays}", timezone=UTC),
            ]
        )
    return CronTrigger.from_crontab(f"{minute} {hour} {day} {month} {weekdays}", timezone=UTC)


def _weekday_names(field: str) -> str:
    """A crontab day-of-week field as APScheduler weekday names (``1-5`` -> ``mon,tue,wed,thu,fri``)."""
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            low, high = 0, 7
        else:
            first, _, last = base.partition("-")
            low = _weekday_number(first)
            high = _weekday_number(last) if last else (7 if step_text else low)
        days.update(number % 7 for number in range(low, high + 1, step))
    return "*" if days == set(range(7)) else ",".join(_WEEKDAYS[number] for number in sorted(days))


def _weekday_number(text: str) -> int:
    return _WEEKDAYS.index(text.lower()) if text.lower() in _WEEKDAYS else int(text)


def next_fire_times(expression: str, *, now: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` times (UTC) at which ``expression`` fires after ``now``."""
    trigger = cron_trigger(expression)
    times: list[datetime] = []
    previous: datetime | None = None
    moment = now
    while len(times) < count:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        times.append(fire.astimezone(UTC))
        previous, moment = fire, fire + timedelta(seconds=1)
    return times


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: ``backup:<source>``, ``prune``, ``check`` or ``drill:<name>``."""

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
    return specs


# ---- what each kind of job runs --------------------------------------------------------------------

RepositoryFor = Callable[[bool], Repository]  # open the repository (creating it when True), once per job
JobRunner = Callable[[Operations, JobSpec, RepositoryFor, Callable[[int], None]], None]


def _run_backup(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.backup(spec.name, repository=lambda: repository(True), progress=progress)


def _run_prune(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.prune(repository=lambda: repository(False))


def _run_check(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    share = operations.policy.repository.check.read_data_subset or 0.0
    operations.check(repository=lambda: repository(False), read_data=share)


def _run_drill(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.drill(spec.name, repository=lambda: repository(False))


def _run_janitor(operations: Operations, spec: JobSpec, repository: RepositoryFor, progress: Callable[[int], None]) -> None:
    operations.janitor()


JOB_RUNNERS: dict[RunKind, JobRunner] = {
    RunKind.BACKUP: _run_backup,
    RunKind.PRUNE: _run_prune,
    RunKind.CHECK: _run_check,
    RunKind.DRILL: _run_drill,
    RunKind.JANITOR: _run_janitor,
}


# ---- running jobs and aborting them ----------------------------------------------------------------


@dataclass
class RunningJob:
    """A job in progress on a worker thread, and the means to abort it."""

    spec: JobSpec
    thread_id: int
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _done: bool = False

    def progress(self, moved: int) -> None:
        """A backup's progress callback: the cooperative abort point."""
        if self.cancel.is_set():
            raise JobAborted(f"{self.spec.id}: the service is stopping")

    def abort(self) -> None:
        """Ask the job to stop, and raise JobAborted into its thread unless it has finished."""
        self.cancel.set()
        with self._guard:
            if not self._done:
                _raise_in_thread(self.thread_id, JobAborted)

    def finish(self) -> None:
        """Called by the job's own thread as it ends: no abort may land after this."""
        with self._guard:
            self._done = True
        _raise_in_thread(self.thread_id, None)  # drop an abort raised but not delivered yet


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next bytecode (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception is not None else None
    )


def stop_child_processes() -> list[int]:
    """SIGTERM every descendant process of this one (Linux ``/proc``); return their pids."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(parent, []).append(int(entry.name))
    found, queue = [], list(parents.get(os.getpid(), []))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += parents.get(pid, [])
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    return found


# ---- one service per state DB ----------------------------------------------------------------------


def _instance_lock_path(state: Path) -> Path:
    return state.parent / "locks" / f"serve-{state.name}.lock"


def running_service_pid(state: Path) -> int | None:
    """The pid of the ``lifeboat serve`` using state DB ``state`` on this machine, or None."""
    path = _instance_lock_path(state)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(os.pread(fd, 4096, 0))["pid"])
        return -1
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def _instance_lock(state: Path) -> Iterator[None]:
    path = _instance_lock_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = running_service_pid(state)
            raise ServiceError(f"another `lifeboat serve` (pid {other}) already uses the state DB {state}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid()}).encode(), 0)
        yield
    finally:
        os.close(fd)


# ---- the service -----------------------------------------------------------------------------------


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
        self.redactor.add(self.policy.secret_values())
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
            self._resources.enter_context(_instance_lock(policy.state))
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
        self._schedule(policy)
        self._scheduler.start()
        log.info("service.started", url=self._http.url, state=str(policy.state), jobs=self.jobs())
        if not self._specs:
            log.warning("service.no_jobs", advice="give sources, repository.prune/check or drills a schedule")

    def stop(self) -> bool:
        """Stop taking jobs, let the running ones finish up to ``service.stop_timeout``, abort the rest
        (see the module docstring); True when every job has ended, False when one could not be unwound."""
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
        self.redactor.add(policy.secret_values())
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

            def repository(create: bool) -> Repository:
                return opened.enter_context(open_repository(policy.repository, create=create))

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
        self._aborting.set()
        for job in jobs:
            job.abort()
        # Only when this process is `lifeboat serve`: run in-process (tests, an embedding program), the
        # children may be someone else's servers, and the raised exception has to do on its own.
        stopped = stop_child_processes() if self._owns_process else []
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
