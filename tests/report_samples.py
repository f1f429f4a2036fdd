"""Drill runs built by hand for the report and notification tests: PASS, FAIL and ERROR runs.

A PASS run of the nightly drill has three sources whose restores add up to RTO 4m12s against a
30m objective, and an RPO objective of 26h.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drills.model import DrillRun, Objectives, SourceRun, Status, Step

T0 = datetime(2026, 6, 11, 4, 0, 0, tzinfo=UTC)
OBJECTIVES = Objectives(rto_seconds=30 * 60, rpo_seconds=26 * 3600)
STEP_NAMES = ("select-snapshot", "rpo", "provision", "restore", "verify", "fault:corrupt-chunk", "teardown")
# source -> (kind, RTO seconds, RPO seconds): 62 + 130 + 60 = 252 s = 4m12s
SOURCES = {"k8s-etcd": ("etcd", 62.0, 1200.0), "features": ("clickhouse", 130.0, 7200.0), "models": ("s3", 60.0, 1800.0)}

VERIFY_FAILED = "fingerprint mismatch: features.events partition 202606 has 998 rows, the snapshot 1000"
PROVISION_ERROR = "scratch S3 endpoint http://127.0.0.1:9 unreachable: connection refused"
FAULT_NOT_RUN = "the restored copy it needs was not verified"
PROVISION_NOT_RUN = "provision ended in ERROR"


def step(name: str, verdict: Status = Status.PASS, *, seconds: float = 1.5, message: str = "", at: datetime = T0) -> Step:
    """One step that took ``seconds`` from ``at``."""
    return Step(name, verdict, at, at + timedelta(seconds=seconds), message or f"{name} ok")


def not_run(name: str, reason: str, at: datetime = T0) -> Step:
    """A step that never ran, as the runner records it."""
    return Step.not_run(name, reason, at)


def source_run(
    name: str,
    *,
    outcomes: dict[str, tuple[Status, str]] | None = None,
    rto: float | None = None,
    rpo: float | None = None,
    at: datetime = T0,
) -> SourceRun:
    """A source run with the usual steps, all PASS except those in ``outcomes`` (name -> verdict, message)."""
    kind, default_rto, default_rpo = SOURCES.get(name, ("etcd", 60.0, 600.0))
    rto = default_rto if rto is None else rto
    steps = []
    moment = at
    for step_name in STEP_NAMES:
        verdict, message = (outcomes or {}).get(step_name, (Status.PASS, ""))
        seconds = rto if step_name == "restore" else 1.5
        steps.append(step(step_name, verdict, seconds=seconds, message=message, at=moment))
        moment += timedelta(seconds=seconds)
    snapshot = f"{name}-{(at - timedelta(hours=1)).strftime('%Y%m%dT%H%M%SZ')}-a1b2"
    return SourceRun(
        name,
        kind,
        snapshot,
        rto,
        default_rpo if rpo is None else rpo,
        steps,
        {"keys": 4120} if kind == "etcd" else {},
    )


def drill_run(sources: list[SourceRun], *, run_id: str = "nightly-20260611T040000Z-0001", at: datetime = T0) -> DrillRun:
    """A finished nightly run over ``sources``."""
    finished = at + timedelta(seconds=sum(step.seconds for source in sources for step in source.steps))
    return DrillRun("nightly", run_id, at, OBJECTIVES, finished, sources)


def passing_run(*, at: datetime = T0, run_id: str = "nightly-20260611T040000Z-0001", rto_scale: float = 1.0) -> DrillRun:
    """Three sources, every step PASS, RTO 4m12s (times ``rto_scale``)."""
    sources = [source_run(name, rto=SOURCES[name][1] * rto_scale, at=at) for name in SOURCES]
    return drill_run(sources, run_id=run_id, at=at)


def failing_run() -> DrillRun:
    """``features`` restored but verified wrong: FAIL; its fault scenario was not run."""
    features = source_run("features", outcomes={"verify": (Status.FAIL, VERIFY_FAILED)})
    features.steps[5] = not_run("fault:corrupt-chunk", FAULT_NOT_RUN, features.steps[5].started)
    return drill_run([source_run("k8s-etcd"), features, source_run("models")])


def erroring_run() -> DrillRun:
    """``models`` scratch could not be provisioned, so nothing after it ran: ERROR, RTO unknown. The
    snapshot's census (161 objects) says what the snapshot holds, not what was restored."""
    models = source_run("models", outcomes={"provision": (Status.ERROR, PROVISION_ERROR)})
    models.steps = models.steps[:3] + [
        not_run(name, PROVISION_NOT_RUN, models.steps[2].finished) for name in ("restore", "verify", "fault:corrupt-chunk")
    ]
    models.rto_seconds = None
    models.census = {"objects": 161, "bytes": 52_428_800}
    return drill_run([source_run("k8s-etcd"), source_run("features"), models])


RTO_MISSED = "restore took 35m00s, over the RTO objective 30m00s"
RPO_MISSED = "newest good snapshot models-20260610T000000Z-9f9f is 30h00m old, over the RPO objective 26h00m"


def late_run() -> DrillRun:
    """Everything restored and verified, but ``features`` took 35m (objective 30m) and ``models``'
    newest snapshot is 30h old (objective 26h): FAIL on objectives alone."""
    features = source_run("features", rto=35 * 60.0)
    features.steps.insert(4, step("rto", Status.FAIL, seconds=0.0, message=RTO_MISSED, at=features.steps[3].finished))
    models = source_run("models", rpo=30 * 3600.0, outcomes={"rpo": (Status.FAIL, RPO_MISSED)})
    return drill_run([source_run("k8s-etcd"), features, models])


def fast_history(count: int) -> list[DrillRun]:
    """``count`` earlier runs one a day before T0 whose restores take well under a second."""
    runs = []
    for days_ago in range(count, 0, -1):
        at = T0 - timedelta(days=days_ago)
        run = passing_run(at=at, run_id=f"nightly-fast-{days_ago:04x}", rto_scale=0.002 + 0.001 * (days_ago % 3))
        runs.append(run)
    return runs


def fast_run() -> DrillRun:
    """A passing run whose restores took 0.12 s, 0.26 s and 0.12 s."""
    return passing_run(rto_scale=0.002)


def history(count: int) -> list[DrillRun]:
    """``count`` earlier nightly runs, one a day before T0, RTOs varying around 4m, one of them FAIL."""
    runs = []
    for days_ago in range(count, 0, -1):
        at = T0 - timedelta(days=days_ago)
        run = passing_run(
            at=at, run_id=f"nightly-{at.strftime('%Y%m%dT%H%M%SZ')}-{days_ago:04x}", rto_scale=0.8 + 0.1 * (days_ago % 4)
        )
        if days_ago == 3:
            run.sources[1].steps[4] = step("verify", Status.FAIL, message="row count differs", at=at)
        runs.append(run)
    return runs
