"""Wording shared by every report format, so the text, HTML, JUnit and the mail subject agree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from drills.model import NOT_RUN_PREFIX, DrillRun, SourceRun, Status, Step
from policies.durations import format_duration, human_duration

NOT_MEASURED = "n/a"
TWO_DAYS = 2 * 86400  # from here on, hours are counted in days
RUN_SCOPE = "run"  # how run-level steps (scratch set-up, janitor...) are labelled next to source names
NOT_RUN = "not run"
# Steps that check a measured time against its objective: the label of the objective and the figure.
OBJECTIVE_STEPS = {"rto": ("RTO", "rto_seconds"), "rpo": ("RPO", "rpo_seconds")}

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
    """``4m12s of 30m objective``, ``37m02s of 30m objective, over by 7m02s``; ``n/a (objective 30m)``
    when not measured."""
    if seconds is None:
        return f"{NOT_MEASURED} (objective {objective(limit)})"
    text = f"{measured(seconds)} of {objective(limit)} objective"
    return f"{text}, over by {measured(seconds - limit)}" if over(seconds, limit) else text


def source_rto(source: SourceRun, limit: float) -> str:
    """A source's RTO against ``limit``; ``not run`` when its restore never ran (nothing was timed)."""
    if source.rto_seconds is None and not ran(source, "restore"):
        return NOT_RUN
    return against(source.rto_seconds, limit)


def ran(source: SourceRun, name: str) -> bool:
    """Whether step ``name`` of ``source`` ran (whatever its verdict)."""
    return any(step.name == name and step.ran for step in source.steps)


def restored(source: SourceRun) -> bool:
    """Whether the source's restore ran and passed: only then are its figures what was restored."""
    return any(step.name == "restore" and step.ran and step.verdict is Status.PASS for step in source.steps)


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
    """The FAIL and ERROR steps of a run that ran (the causes), in the order they ran."""
    return [scoped for scoped in all_steps(run) if scoped.step.verdict is not Status.PASS and scoped.step.ran]


@dataclass(frozen=True)
class NotRun:
    """The steps of one scope (a source, or ``run``) that never ran, and why."""

    scope: str
    steps: list[Step]

    @property
    def reason(self) -> str:
        """The reason they share, or the first one's when they differ."""
        return self.steps[0].message.removeprefix(NOT_RUN_PREFIX)

    def line(self) -> str:
        """``not run on models: restore, verify (provision ended in ERROR)``."""
        names = ", ".join(step.name for step in self.steps)
        return f"{NOT_RUN} on {self.scope}: {names} ({self.reason})"


def not_run_steps(run: DrillRun) -> list[NotRun]:
    """Per scope, the steps that never ran, in the order they were planned."""
    scopes: dict[str, list[Step]] = {}
    for scoped in all_steps(run):
        if not scoped.step.ran:
            scopes.setdefault(scoped.scope, []).append(scoped.step)
    return [NotRun(scope, steps) for scope, steps in scopes.items()]


def objective_misses(run: DrillRun) -> list[str]:
    """``features RTO 35m00s, 5m00s over the 30m objective`` for each objective step that failed."""
    limits = {"rto_seconds": run.objectives.rto_seconds, "rpo_seconds": run.objectives.rpo_seconds}
    misses = []
    for source in run.sources:
        for step in source.steps:
            if step.name not in OBJECTIVE_STEPS or step.verdict is not Status.FAIL or not step.ran:
                continue
            label, figure = OBJECTIVE_STEPS[step.name]
            value, limit = getattr(source, figure), limits[figure]
            if value is None:
                misses.append(f"{source.source} {label} over the {objective(limit)} objective")
            else:
                by = measured(max(value - limit, 0.0))
                misses.append(f"{source.source} {label} {measured(value)}, {by} over the {objective(limit)} objective")
    return misses


def verdict_meaning(run: DrillRun) -> str:
    """What the verdict means for this run. A FAIL says which objectives were missed, and by how
    much; a FAIL on missed objectives alone does not claim that a check found something wrong."""
    verdict = run.verdict
    if verdict is not Status.FAIL:
        return VERDICT_MEANING[verdict]
    misses = objective_misses(run)
    if not misses:
        return VERDICT_MEANING[verdict]
    checks_failed = any(
        scoped.step.verdict is Status.FAIL and scoped.step.name not in OBJECTIVE_STEPS for scoped in unsuccessful_steps(run)
    )
    missed = "missed its objective" + ("s" if len(misses) > 1 else "") + ": " + "; ".join(misses)
    return f"{VERDICT_MEANING[verdict]}; it also {missed}" if checks_failed else missed


def unsuccessful_scopes(run: DrillRun) -> list[tuple[str, Status]]:
    """``(name, verdict)`` of each run-level step and source that did not pass."""
    scopes: list[tuple[str, Status]] = [(step.name, step.verdict) for step in run.steps if step.verdict is not Status.PASS]
    scopes += [(source.source, source.verdict) for source in run.sources if source.verdict is not Status.PASS]
    return scopes


def run_seconds(run: DrillRun) -> float | None:
    """Wall-clock length of the run, when it has finished."""
    return None if run.finished is None else (run.finished - run.started).total_seconds()
