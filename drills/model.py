"""What a drill run records (DESIGN section 6): steps, per-source runs, the run, and verdicts.

Verdicts are three. PASS: verified and right. FAIL: verified and wrong. ERROR: could not verify.
A run (or a source) is FAIL if any step failed, else ERROR if any step errored, else PASS; an ERROR
is never shown as a pass. These objects are plain data: the runner fills them, the reports render
them, the state DB stores them (``to_dict`` / ``from_dict`` round-trip the JSON report schema).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

REPORT_SCHEMA = "lifeboat.drill-report/v1"
NOT_RUN_PREFIX = "not run: "  # how a step that never ran begins its message (the reason follows)


class Status(StrEnum):
    """A verdict, of a step, a source or a run; ``lifeboat``'s run history records a drill run with it too."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


def combine(statuses: list[Status]) -> Status:
    """FAIL beats ERROR beats PASS. No step at all is ERROR: nothing was proven."""
    if not statuses:
        return Status.ERROR
    if Status.FAIL in statuses:
        return Status.FAIL
    if Status.ERROR in statuses:
        return Status.ERROR
    return Status.PASS


@dataclass
class Step:
    """One recorded step: ``select-snapshot``, ``rpo``, ``provision``, ``restore``, ``verify``,
    ``fault:corrupt-chunk``, ..., ``teardown``.

    ``ran`` is False for a step that never ran because an earlier one did not pass: its verdict is
    ERROR (nothing was proven), its message ``not run: <reason>``, and it took no time.
    """

    name: str
    verdict: Status
    started: datetime
    finished: datetime
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    ran: bool = True

    @classmethod
    def not_run(cls, name: str, reason: str, at: datetime) -> Step:
        """The record of step ``name``, which did not run because of ``reason``."""
        return cls(name, Status.ERROR, at, at, NOT_RUN_PREFIX + reason, ran=False)

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "seconds": round(self.seconds, 3),
            "message": self.message,
            "details": self.details,
            "ran": self.ran,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Step:
        verdict, message = Status(doc["verdict"]), doc["message"]
        # Reports written before "ran" existed marked a step that never ran by its message alone.
        ran = doc.get("ran", not (verdict is Status.ERROR and message.startswith(NOT_RUN_PREFIX)))
        return cls(
            doc["name"],
            verdict,
            datetime.fromisoformat(doc["started"]),
            datetime.fromisoformat(doc["finished"]),
            message,
            doc.get("details") or {},
            bool(ran),
        )


@dataclass
class SourceRun:
    """A drill's work on one source."""

    source: str
    kind: str
    snapshot: str | None = None
    rto_seconds: float | None = None  # the timed restore; None when it did not complete
    rpo_seconds: float | None = None  # age of the newest good snapshot when the drill started
    steps: list[Step] = field(default_factory=list)
    census: dict[str, Any] = field(default_factory=dict)  # what was restored ("412 pods, 38 deployments")
    consistency: dict[str, Any] = field(default_factory=dict)  # the snapshot's consistency window, when it has one

    @property
    def verdict(self) -> Status:
        return combine([step.verdict for step in self.steps])

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "snapshot": self.snapshot,
            "verdict": self.verdict.value,
            "rto_seconds": _round(self.rto_seconds),
            "rpo_seconds": _round(self.rpo_seconds),
            "census": self.census,
            "consistency": self.consistency,
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SourceRun:
        return cls(
            doc["source"],
            doc["kind"],
            doc.get("snapshot"),
            doc.get("rto_seconds"),
            doc.get("rpo_seconds"),
            [Step.from_dict(step) for step in doc.get("steps", [])],
            doc.get("census") or {},
            doc.get("consistency") or {},
        )


@dataclass
class Objectives:
    rto_seconds: float
    rpo_seconds: float


@dataclass
class DrillRun:
    """One run of one drill, over its sources."""

    drill: str
    run_id: str
    started: datetime
    objectives: Objectives
    finished: datetime | None = None
    sources: list[SourceRun] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)  # run-level steps (scratch set-up, janitor...)
    report_files: dict[str, str] = field(default_factory=dict)
    restore_point: dict[str, Any] | None = None  # the restore point a drill of one restored (its manifest)

    @property
    def verdict(self) -> Status:
        return combine([step.verdict for step in self.steps] + [source.verdict for source in self.sources])

    @property
    def rto_seconds(self) -> float | None:
        """Total RTO: the sources' restores, one after another."""
        times = [source.rto_seconds for source in self.sources]
        return None if not times or any(t is None for t in times) else sum(t for t in times if t is not None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report, and the ``drill run --json`` shape (DESIGN section 7)."""
        return {
            "schema": REPORT_SCHEMA,
            "drill": self.drill,
            "run_id": self.run_id,
            "verdict": self.verdict.value,
            "started": self.started.isoformat(),
            "finished": (self.finished or datetime.now(UTC)).isoformat(),
            "rto_seconds": _round(self.rto_seconds),
            "objectives": {"rto_seconds": self.objectives.rto_seconds, "rpo_seconds": self.objectives.rpo_seconds},
            "sources": [source.to_dict() for source in self.sources],
            "steps": [step.to_dict() for step in self.steps],
            "report_files": self.report_files,
            "restore_point": self.restore_point,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DrillRun:
        if doc.get("schema") != REPORT_SCHEMA:
            raise ValueError(f"not a {REPORT_SCHEMA} report: {doc.get('schema')!r}")
        objectives = doc["objectives"]
        return cls(
            drill=doc["drill"],
            run_id=doc["run_id"],
            started=datetime.fromisoformat(doc["started"]),
            objectives=Objectives(objectives["rto_seconds"], objectives["rpo_seconds"]),
            finished=datetime.fromisoformat(doc["finished"]),
            sources=[SourceRun.from_dict(source) for source in doc["sources"]],
            steps=[Step.from_dict(step) for step in doc.get("steps", [])],
            report_files=doc.get("report_files") or {},
            restore_point=doc.get("restore_point"),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
