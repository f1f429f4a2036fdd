"""The drill runner (DESIGN section 6): for each source of a drill, pick the snapshot, check the RPO,
provision scratch, restore (timed: the RTO), verify, run the source's checks on the copy, compare the
snapshot's census with the live source and the previous snapshot (drift), run the fault scenarios,
tear down; every step recorded. Then the drill's command checks run against every verified copy
(kept until then). ``only_checks`` re-runs the checks alone: restore, verify, checks (no RPO, drift
or faults).
The repository is held under a shared lock for the whole run, so prune cannot remove the snapshot
being proven.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.restore_points import RestorePoint, list_restore_points
from backup.repository.retry import failures_expected
from backup.sources import make_source as default_source_factory
from backup.sources.base import Source, SourceFactory
from drills.checks import (
    RestoredCopy,
    command_environment,
    copy_target,
    run_command_check,
    run_references_check,
    run_source_check,
    step_name,
)
from drills.drift import check_drift
from drills.faults import FAULTS, DrillContext
from drills.model import DrillRun, Objectives, SourceRun, Status
from drills.scratch.base import ScratchEnvironment, Slot
from drills.steps import StepFailed, StepUnverified, record_not_run, step
from policies.durations import human_duration
from policies.errors import IntegrityError, VerificationFailed
from policies.model import Drill, Policy, ReferencesCheck, SnapshotSelector, SourceCheck

log = structlog.get_logger(__name__)
Clock = Callable[[], datetime]


def new_run_id(now: datetime) -> str:
    """Sortable, and usable inside database, bucket and namespace names once lowercased."""
    return f"{now.astimezone(UTC):%Y%m%dt%H%M%Sz}-{secrets.token_hex(2)}"


def run_drill(
    policy: Policy,
    name: str,
    *,
    repository: Repository,
    scratch: ScratchEnvironment,
    make_source: SourceFactory = default_source_factory,
    clock: Clock = lambda: datetime.now(UTC),
    only_checks: bool = False,
) -> DrillRun:
    """Run drill ``name`` into ``scratch`` (which it always tears down) and return the record;
    ``only_checks``: restore, verify and the checks only (no RPO, drift or fault steps)."""
    drill = policy.drills[name]
    objectives = Objectives(drill.objectives.rto.total_seconds(), drill.objectives.rpo.total_seconds())
    run = DrillRun(drill=name, run_id=scratch.run_id, started=clock(), objectives=objectives)
    stale_after = policy.repository.lock_stale_after.total_seconds()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_teardown, run, scratch)
        with step(run.steps, "lock-repository") as outcome:
            cleanup.enter_context(repository.lock("shared", f"drill {name}", stale_after=stale_after))
            outcome.message = "shared lock held: prune waits until the drill ends"
        locked = run.steps[-1]
        members: dict[str, str] = {}  # a restore point's member snapshots, by source
        if drill.restore_point is not None and locked.verdict is Status.PASS:
            members = _restore_point_step(repository, drill, run, clock)
            locked = run.steps[-1]
        kept: list[tuple[SourceRun, DrillContext]] = []  # verified copies the drill's command checks reach
        cleanup.callback(_release_kept, kept)
        for source_name in drill.sources:
            settings = policy.sources[source_name]
            chosen = SnapshotSelector(snapshot_id=members[source_name]) if source_name in members else drill.snapshot
            plan = _Plan(drill, tuple(settings.checks), only_checks, kept if drill.checks else None, chosen)
            if locked.verdict is Status.PASS:
                record = _drill_source(make_source(source_name, settings), plan, repository, scratch, clock)
            else:
                record = SourceRun(source=source_name, kind=settings.kind)
            planned = planned_steps(drill, settings.checks, only_checks=only_checks)
            record_not_run(record.steps, planned, cause=None if locked.verdict is Status.PASS else locked)
            run.sources.append(record)
        _command_checks(policy, name, run, kept, scratch)
    run.finished = clock()
    log.info("drill.finished", drill=name, run_id=run.run_id, verdict=run.verdict.value, rto_seconds=run.rto_seconds)
    return run


def planned_steps(drill: Drill, checks: Sequence[SourceCheck] = (), *, only_checks: bool = False) -> tuple[str, ...]:
    """The steps a source goes through when each passes (teardown aside): those missing from a
    source's record are recorded as not run, so a report never leaves them silently out."""
    checked = tuple(step_name(check.name) for check in checks)
    if only_checks:
        return ("select-snapshot", "provision", "restore", "rto", "verify", *checked)
    faults = (f"fault:{fault}" for fault in drill.faults)
    return ("select-snapshot", "rpo", "provision", "restore", "rto", "verify", *checked, "drift", *faults)


@dataclass(frozen=True)
class _Plan:
    """What a drill does with one source."""

    drill: Drill
    checks: tuple[SourceCheck, ...]
    only_checks: bool
    keep: list[tuple[SourceRun, DrillContext]] | None  # where a verified copy is kept for command checks
    snapshot: SnapshotSelector  # the drill's, or the restore point's member snapshot


def _restore_point_step(repository: Repository, drill: Drill, run: DrillRun, clock: Clock) -> dict[str, str]:
    """Step ``restore-point``: the restore point the drill restores (its spread is the platform's RPO
    bound); returns its member snapshots by source, none when there is no complete one."""
    with step(run.steps, "restore-point") as outcome:
        point = select_restore_point(repository, str(drill.restore_point), drill.snapshot, clock())
        run.restore_point = point.as_dict()
        spread = human_duration(point.spread_seconds or 0.0)
        outcome.message = (
            f"{point.id} ({drill.snapshot.describe()}): members {', '.join(point.snapshots)}; spread {spread}, the "
            "platform's RPO bound (its members' states are at most that far apart)"
        )
        outcome.details = {"restore_point": point.id, "spread_seconds": point.spread_seconds}
        return {member.source: str(member.snapshot) for member in point.members}
    return {}


def select_restore_point(repository: Repository, name: str, selector: SnapshotSelector, now: datetime) -> RestorePoint:
    """The complete restore point of ``name`` a drill restores: the newest, a random one of a recent
    window, or one by id; raises StepUnverified when there is none."""
    complete = [point for point in list_restore_points(repository, name) if point.status == "complete"]
    if selector.snapshot_id:
        complete = [point for point in complete if point.id == selector.snapshot_id]
    elif selector.random_within is not None:
        complete = [point for point in complete if point.started >= now - selector.random_within]
    if not complete:
        raise StepUnverified(
            f"no complete restore point of '{name}' ({selector.describe()}) in {repository.url}: take one with "
            f"`lifeboat backup run --restore-point {name}`"
        )
    return random.choice(complete) if selector.random_within is not None else complete[-1]


def _command_checks(
    policy: Policy, name: str, run: DrillRun, kept: list[tuple[SourceRun, DrillContext]], scratch: ScratchEnvironment
) -> None:
    """The drill's command checks, as run-level steps, against the kept copies, run where the scratch
    environment runs them (this machine, or a Job of the drill namespace)."""
    drill = policy.drills[name]
    verified = {record.source: (record, ctx) for record, ctx in kept}
    for check in drill.checks:
        with step(run.steps, step_name(check.name), context={"drill": name}) as outcome:
            if isinstance(check, ReferencesCheck):
                run_references_check(check, {source: ctx for source, (_, ctx) in verified.items()}, outcome)
                continue
            needed = check.sources or drill.sources
            if missing := [source for source in needed if source not in verified]:
                raise StepUnverified(f"not run: no verified copy of {', '.join(missing)} to check")
            copies = [_restored_copy(*verified[source]) for source in needed]
            env, withheld = command_environment(policy, name, run.run_id, copies)
            run_command_check(check, env, withheld, outcome, scratch.run_command)


def _restored_copy(record: SourceRun, ctx: DrillContext) -> RestoredCopy:
    """The copy as the check's program reaches it (``command_view``: not through this process's relays)."""
    data_dir = ctx.main.restore_options(direct=True).get("to_data_dir")
    seen = replace(ctx, main=ctx.scratch.command_view(ctx.main))
    return RestoredCopy(record.source, record.kind, ctx.header.id, copy_target(seen), data_dir)


def _release_kept(kept: list[tuple[SourceRun, DrillContext]]) -> None:
    for record, ctx in kept:
        with step(record.steps, "teardown", context={"drill_source": record.source}) as outcome:
            ctx.main.release()
            outcome.message = f"released {ctx.main.label} (kept for the drill's command checks)"


def _rpo(repository: Repository, name: str, drill: Drill, record: SourceRun, clock: Clock, context: dict[str, str]) -> None:
    with step(record.steps, "rpo", context=context) as outcome:
        newest = repository.find_snapshot(name)
        record.rpo_seconds = age = max((clock() - newest.started).total_seconds(), 0.0)
        objective = drill.objectives.rpo.total_seconds()
        if age > objective:
            over = f"over the RPO objective {human_duration(objective)}"
            raise StepFailed(f"newest good snapshot {newest.id} is {human_duration(age)} old, {over}")
        outcome.message = (
            f"newest good snapshot is {human_duration(age)} old, within the RPO objective {human_duration(objective)}"
        )


def _teardown(run: DrillRun, scratch: ScratchEnvironment) -> None:
    with step(run.steps, "teardown") as outcome:
        removed = scratch.teardown()
        outcome.message = f"removed {len(removed)} scratch item(s)" if removed else "nothing left to remove"
        outcome.details = {"removed": removed}


def _drill_source(
    source: Source, plan: _Plan, repository: Repository, scratch: ScratchEnvironment, clock: Clock
) -> SourceRun:
    """One source's steps, each recorded; the phases live in helpers."""
    drill = plan.drill
    name = source.name
    record = SourceRun(source=name, kind=source.kind)
    steps = record.steps
    context = {"drill_source": name}
    header: SnapshotHeader | None = None
    with step(steps, "select-snapshot", context=context) as outcome:
        header = select_snapshot(repository, name, plan.snapshot, clock())
        record.snapshot = header.id
        record.census = header.census.get("totals", {})
        record.consistency = header.meta.get("consistency") or {}
        taken = human_duration((clock() - header.started).total_seconds())
        outcome.message = f"{header.id} ({plan.snapshot.describe()}), taken {taken} ago"
    if not plan.only_checks:
        _rpo(repository, name, drill, record, clock, context)
    if header is None:
        return record
    slot: Slot | None = None
    with step(steps, "provision", context=context) as outcome:
        slot = scratch.slot(name, record.kind, header)
        outcome.message = slot.label
    if slot is None:
        if not plan.only_checks:
            _drift(source, repository, header, drill, record, context)
        return record
    ctx = DrillContext(source=source, repository=repository, header=header, scratch=scratch, main=slot)
    verified = False
    try:
        verified = _restore_and_verify(ctx, record, drill, context)
        if record.rto_seconds is not None:  # a copy is there: the team's checks run on it
            for check in plan.checks:
                with step(steps, step_name(check.name), context=context) as outcome:
                    run_source_check(ctx, check, outcome)
        if not plan.only_checks:
            _drift(source, repository, header, drill, record, context)
            _faults(ctx, drill, record, verified, context, keeps_main=plan.keep is not None)
    finally:
        if verified and plan.keep is not None:
            plan.keep.append((record, ctx))  # released once the drill's command checks ran
        else:
            with step(steps, "teardown", context=context) as outcome:
                slot.release()
                outcome.message = f"released {slot.label}"
    return record


def _faults(
    ctx: DrillContext, drill: Drill, record: SourceRun, verified: bool, context: dict[str, str], *, keeps_main: bool
) -> None:
    """The fault scenarios; the canary, which leaves its copy tampered, gets a copy of its own when
    the main one is kept for the drill's command checks."""
    for fault in drill.faults:
        with step(record.steps, f"fault:{fault}", context=context) as outcome:
            if not verified:
                raise StepUnverified("not run: the restored copy it needs was not verified")
            scenario = FAULTS[fault]()
            with failures_expected():  # the retries a fault causes on purpose are not warnings
                if scenario.leaves_copy_tampered and keeps_main:
                    own = ctx.fresh_slot()
                    try:
                        ctx.restore(own)
                        scenario.run(replace(ctx, main=own), outcome)
                    finally:
                        own.release()
                else:
                    scenario.run(ctx, outcome)


def _restore_and_verify(ctx: DrillContext, record: SourceRun, drill: Drill, context: dict[str, str]) -> bool:
    """The timed restore, the RTO check and the verification; True when the copy verified."""
    with step(record.steps, "restore", context=context) as outcome:
        started = time.monotonic()
        try:
            result = ctx.restore(ctx.main)
        except IntegrityError as exc:
            raise StepFailed(f"the backup itself is damaged: {exc}") from exc
        except VerificationFailed as exc:  # the restore checked the copy itself and found it wrong
            differences = exc.differences[:20]
            raise StepFailed(f"the restored copy differs from the snapshot: {exc}", differences=differences) from exc
        record.rto_seconds = time.monotonic() - started
        took = human_duration(record.rto_seconds)
        if result.dry_run:  # the slot restores by itself (kubernetes etcd: the pod's init container)
            outcome.message = f"{ctx.main.label} restored snapshot {result.snapshot} itself in {took}"
        else:
            outcome.message = f"restored {result.bytes} bytes into {ctx.main.label} in {took}"
        outcome.details = {
            "bytes": result.bytes,
            **{k: v for k, v in result.figures.items() if isinstance(v, int | float | str)},
        }
    if record.rto_seconds is None:
        return False
    objective = drill.objectives.rto.total_seconds()
    with step(record.steps, "rto", context=context) as outcome:
        if record.rto_seconds > objective:
            raise StepFailed(
                f"restore took {human_duration(record.rto_seconds)}, over the RTO objective {human_duration(objective)}"
            )
        outcome.message = f"{human_duration(record.rto_seconds)} within the RTO objective {human_duration(objective)}"
    with step(record.steps, "verify", context=context) as outcome:
        verification = ctx.verify(ctx.main)
        outcome.details = {"checked": verification.checked, "differences": verification.differences[:20]}
        if verification.verdict.value == "mismatch":
            raise StepFailed(f"restored data differs from the snapshot: {verification.message}")
        if verification.verdict.value == "unverified":
            raise StepUnverified(f"could not verify: {verification.message}")
        outcome.message = verification.message
    return record.steps[-1].verdict is Status.PASS


def _drift(
    source: Source, repository: Repository, header: SnapshotHeader, drill: Drill, record: SourceRun, context: dict[str, str]
) -> None:
    """Did the snapshot see its whole source? Its census against the live source now and the previous
    good snapshot (drills/drift.py has the rule): FAIL when it holds markedly less than both, ERROR
    when the live source cannot be read. It needs no scratch copy, so it runs whether or not the
    restore and verification succeeded: a restore that verified proves the copy faithful to the
    snapshot, not the snapshot faithful to the source."""
    with step(record.steps, "drift", context=context) as outcome:
        check_drift(source, repository, header, drill.drift, outcome)


def select_snapshot(repository: Repository, source: str, selector: SnapshotSelector, now: datetime) -> SnapshotHeader:
    """The snapshot a drill restores: latest good, a random good one of a recent window, or one id."""
    if selector.snapshot_id:
        return repository.find_snapshot(source, snapshot=selector.snapshot_id)
    if selector.random_within is not None:
        since = now - selector.random_within
        candidates = [h for h in repository.list_snapshots(source) if h.status == "good" and h.started >= since]
        if not candidates:
            raise StepUnverified(
                f"no good snapshot of '{source}' within {human_duration(selector.random_within.total_seconds())}"
            )
        return random.choice(candidates)  # choosing a sample, not a secret
    return repository.find_snapshot(source)
