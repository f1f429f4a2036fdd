"""RTO forecast: next month's restore time of each drilled source, from the run history (issue 17).

Method, stated where it is shown (``METHOD``): over the newest ``RUNS_USED`` drill runs of a drill
that measured a source's restore (state DB figures: ``rto_seconds`` and the snapshot's ``bytes``), a
least-squares line of the restore throughput (bytes / RTO) against time; over the newest
``RUNS_USED`` successful backups of the source (their snapshot ``size``; the drill runs' bytes when
there are fewer than two backups), a least-squares line of the snapshot size against time. The
forecast RTO at a moment is the size line's value over the throughput line's (the throughput never
taken below a tenth of the slowest measured, so a falling line cannot divide by zero). A drill's
forecast is its sources' sum (they are restored one after another); it *crosses* the drill's RTO
objective at the first hour, within a year, when that sum exceeds the objective. Two drill runs with
a measured restore are needed; fewer give no forecast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lifeboat.state.history import RunHistory
from lifeboat.state.records import DRILL_VERDICTS, RunKind, RunStatus
from policies.model import Policy

RUNS_USED = 10
HORIZON = timedelta(days=30)  # "next month"
LOOK_AHEAD_HOURS = 365 * 24  # how far the crossing is searched, hour by hour
THROUGHPUT_FLOOR = 0.1  # of the slowest measured throughput
METHOD = (
    f"least-squares lines over the last {RUNS_USED} runs: restore throughput (bytes/RTO) of drill runs and "
    f"snapshot size of backups against time; forecast RTO = size / throughput, {HORIZON.days} days ahead"
)
Point = tuple[float, float]  # (seconds since the epoch, value)


@dataclass(frozen=True)
class Line:
    """``value = intercept + slope * t``, t in seconds since the epoch."""

    intercept: float
    slope: float

    def at(self, moment: float) -> float:
        return self.intercept + self.slope * moment


def least_squares(points: Sequence[Point]) -> Line:
    """The least-squares line through ``points`` (one point, or all at one time: a flat line)."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return Line(mean_v, 0.0)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return Line(mean_v - slope * mean_t, slope)


@dataclass(frozen=True)
class SourceTrend:
    """A source's throughput and size lines; ``rto_at(moment)`` is the forecast RTO then."""

    source: str
    throughput: Line
    size: Line
    floor: float

    def rto_at(self, moment: datetime) -> float:
        t = moment.timestamp()
        return max(self.size.at(t), 0.0) / max(self.throughput.at(t), self.floor)


def source_trend(source: str, restores: Sequence[tuple[float, float, float]], sizes: Sequence[Point]) -> SourceTrend | None:
    """The trend from ``restores`` ((time, rto seconds, bytes) of drill runs) and ``sizes`` ((time, bytes)
    of snapshots); None with fewer than two measured restores."""
    measured = [(t, size / rto) for t, rto, size in restores[-RUNS_USED:] if rto > 0 and size > 0]
    if len(measured) < 2:
        return None
    size_points = list(sizes[-RUNS_USED:]) if len(sizes) >= 2 else [(t, size) for t, _, size in restores[-RUNS_USED:]]
    floor = THROUGHPUT_FLOOR * min(value for _, value in measured)
    return SourceTrend(source, least_squares(measured), least_squares(size_points), floor)


@dataclass(frozen=True)
class DrillForecast:
    drill: str
    objective_seconds: float
    at: datetime  # the moment forecast (now + HORIZON)
    sources: dict[str, float]  # forecast RTO per source with a trend
    crossing: datetime | None  # first moment the sum exceeds the objective (None: not within a year)

    @property
    def seconds(self) -> float | None:
        return sum(self.sources.values()) if self.sources else None

    @property
    def over_objective(self) -> bool:
        """The forecast for next month exceeds the objective."""
        return self.seconds is not None and self.seconds > self.objective_seconds

    def as_dict(self) -> dict[str, object]:
        return {
            "drill": self.drill,
            "at": self.at.isoformat(),
            "rto_seconds": None if self.seconds is None else round(self.seconds, 3),
            "objective_seconds": self.objective_seconds,
            "sources": {name: round(value, 3) for name, value in self.sources.items()},
            "crossing": None if self.crossing is None else self.crossing.isoformat(),
            "method": METHOD,
        }


def forecast_drill(drill: str, objective: float, trends: Sequence[SourceTrend], *, now: datetime) -> DrillForecast:
    """The drill's forecast ``HORIZON`` after ``now`` and the first hour its sum crosses ``objective``."""
    at = now + HORIZON
    crossing = None
    if trends:
        for hour in range(LOOK_AHEAD_HOURS + 1):
            moment = now + timedelta(hours=hour)
            if sum(trend.rto_at(moment) for trend in trends) > objective:
                crossing = moment
                break
    return DrillForecast(drill, objective, at, {t.source: t.rto_at(at) for t in trends}, crossing)


def forecasts(policy: Policy, history: RunHistory, *, now: datetime) -> dict[str, DrillForecast]:
    """Every drill's forecast from the state DB's drill and backup runs."""
    found = {}
    for name, drill in policy.drills.items():
        newest = history.runs(RunKind.DRILL, name, limit=RUNS_USED * 3)
        runs = [run for run in reversed(newest) if run.status in DRILL_VERDICTS]
        trends = []
        for source in drill.sources:
            restores = []
            for run in runs:
                item: dict[str, Any] = next((s for s in run.figures.get("sources", []) if s.get("source") == source), {})
                if item.get("rto_seconds") and item.get("bytes") and run.finished is not None:
                    restores.append((run.finished.timestamp(), float(item["rto_seconds"]), float(item["bytes"])))
            backups = [
                run
                for run in reversed(history.runs(RunKind.BACKUP, source, limit=RUNS_USED * 3))
                if run.status is RunStatus.OK and run.finished is not None and run.figures.get("size")
            ]
            sizes = [(run.finished.timestamp(), float(run.figures["size"])) for run in backups if run.finished]
            trend = source_trend(source, restores, sizes)
            if trend is not None:
                trends.append(trend)
        found[name] = forecast_drill(name, drill.objectives.rto.total_seconds(), trends, now=now)
    return found
