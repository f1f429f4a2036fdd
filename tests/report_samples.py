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


def step(name: str, verdict: Status = Status.PASS, *, seconds: float = 1.5, message: str = "", at: datetime = T0) -> Step:
    """One step that took ``seconds`` from ``at``."""
    return Step(name, verdict, at, at + timedelta(seconds=seconds), message or f"{name} ok")


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
    """``features`` restored but verified wrong: FAIL."""
    sources = [
        source_run("k8s-etcd"),
        source_run("features", outcomes={"verify": (Status.FAIL, VERIFY_FAILED)}),
        source_run("models"),
    ]
    return drill_run(sources)


def erroring_run() -> DrillRun:
    """``models`` scratch could not be provisioned, so nothing after it was verified: ERROR, RTO unknown."""
    models = source_run("models", outcomes={"provision": (Status.ERROR, PROVISION_ERROR)})
    models.steps = [s for s in models.steps if s.name in ("select-snapshot", "rpo", "provision", "teardown")]
    models.rto_seconds = None
    return drill_run([source_run("k8s-etcd"), source_run("features"), models])


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
