"""Wording shared by every report format, so the text, HTML, JUnit and the mail subject agree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from drills.model import DrillRun, Status, Step
from policies.durations import format_duration, human_duration

NOT_MEASURED = "n/a"
TWO_DAYS = 2 * 86400  # from here on, hours are counted in days
RUN_SCOPE = "run"  # how run-level steps (scratch set-up, janitor...) are labelled next to source names

# (background, text) per verdict, for every coloured thing in the reports. Amber with dark text for
# ERROR: "could not verify" must never pass for green at a glance.
VERDICT_COLORS = {
    Status.PASS: ("#1a7f37", "#ffffff"),
    Status.FAIL: ("#cf222e", "#ffffff"),
    Status.ERROR: ("#f0a30a", "#1f2328"),
}

VERDICT_MEANING = {
    Status.PASS: "every source was restored and verified",
    Status.FAIL: "a restore or a check was verified and found wrong",
    Status.ERROR: "something could not be verified: this is not a pass",
}


def measured(seconds: float | None) -> str:
    """A measured time for a report line (``4m12s``, ``26h05m``, ``3d04h``), or ``n/a`` when not measured."""
    if seconds is None:
        return NOT_MEASURED
    if seconds < TWO_DAYS:
        return human_duration(seconds)
    days, rest = divmod(round(seconds), 86400)
    return f"{days}d{rest // 3600:02d}h"


def objective(seconds: float) -> str:
    """An objective the way people write it in a policy: ``30m``, ``26h``, ``1w``, not ``30m00s``."""
    whole = int(seconds)
    if whole != seconds:
        return human_duration(seconds)
    if whole % 3600 == 0 and whole < TWO_DAYS:
        return f"{whole // 3600}h"  # "26h" reads better than format_duration's "1d2h"
    return format_duration(timedelta(seconds=whole))


def over(seconds: float | None, limit: float) -> bool:
    """True when a measured time exceeds its objective (an unmeasured one is not 'over')."""
    return seconds is not None and seconds > limit


def against(seconds: float | None, limit: float) -> str:
    """``4m12s of 30m objective``; ``n/a (objective 30m)`` when not measured."""
    if seconds is None:
        return f"{NOT_MEASURED} (objective {objective(limit)})"
    return f"{measured(seconds)} of {objective(limit)} objective"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class ScopedStep:
    """A step with the source it belongs to (or ``run`` for run-level steps)."""

    scope: str
    step: Step


def all_steps(run: DrillRun) -> Iterator[ScopedStep]:
    """Every step of a run: run-level ones first, then each source's, in the order they ran."""
    for step in run.steps:
        yield ScopedStep(RUN_SCOPE, step)
    for source in run.sources:
        for step in source.steps:
            yield ScopedStep(source.source, step)


def unsuccessful_steps(run: DrillRun) -> list[ScopedStep]:
    """The FAIL and ERROR steps of a run, in the order they ran."""
    return [scoped for scoped in all_steps(run) if scoped.step.verdict is not Status.PASS]


def unsuccessful_scopes(run: DrillRun) -> list[tuple[str, Status]]:
    """``(name, verdict)`` of each run-level step and source that did not pass."""
    scopes: list[tuple[str, Status]] = [(step.name, step.verdict) for step in run.steps if step.verdict is not Status.PASS]
    scopes += [(source.source, source.verdict) for source in run.sources if source.verdict is not Status.PASS]
    return scopes


def run_seconds(run: DrillRun) -> float | None:
    """Wall-clock length of the run, when it has finished."""
    return None if run.finished is None else (run.finished - run.started).total_seconds()
