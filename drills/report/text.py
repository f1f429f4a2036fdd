"""The plain-text summary (the mail's text part, a terminal) and the mail subject line."""

from __future__ import annotations

from backup.sources.base import consistency_summary
from drills.model import DrillRun, SourceRun
from drills.report.common import (
    against,
    measured,
    not_run_steps,
    objective,
    plural,
    run_seconds,
    source_rto,
    unsuccessful_scopes,
    unsuccessful_steps,
    verdict_meaning,
)

SUBJECT_PREFIX = "[lifeboat]"
CHECK_PREFIX = "check:"  # the steps of drill checks (drills/checks.py)
SUBJECT_NAMES = 3  # past this many failing sources the subject says "+N more": it must stay one readable line


def subject_line(run: DrillRun) -> str:
    """``[lifeboat] nightly PASS: 3 sources, RTO 4m12s (objective 30m)``.

    A run that did not pass names what failed or errored, e.g.
    ``[lifeboat] nightly FAIL: 3 sources (features FAIL), RTO 4m12s (objective 30m)``.
    """
    verdict = run.verdict
    what = plural(len(run.sources), "source")
    problems = [f"{name} {status.value}" for name, status in unsuccessful_scopes(run)]
    if problems:
        shown = problems[:SUBJECT_NAMES]
        if len(problems) > SUBJECT_NAMES:
            shown.append(f"+{len(problems) - SUBJECT_NAMES} more")
        what += f" ({', '.join(shown)})"
    rto = f"RTO {measured(run.rto_seconds)} (objective {objective(run.objectives.rto_seconds)})"
    return _one_line(f"{SUBJECT_PREFIX} {run.drill} {verdict.value}: {what}, {rto}")


def render_text(run: DrillRun) -> str:
    """A short plain-text summary: the verdict, what went wrong (each failed or errored step, then
    what never ran), then one line per source."""
    lines = [
        f"Lifeboat drill {run.drill}: {run.verdict.value} - {verdict_meaning(run)}",
        f"run {run.run_id}, started {run.started.isoformat(timespec='seconds')}, took {measured(run_seconds(run))}",
        f"total RTO {against(run.rto_seconds, run.objectives.rto_seconds)}",
        "",
    ]
    problems = unsuccessful_steps(run)
    skipped = not_run_steps(run)
    if problems or skipped:
        lines.append("What went wrong:")
        for scoped in problems:
            head = f"  {scoped.step.verdict.value:<5} {scoped.scope} / {scoped.step.name}: "
            lines.append(head + _indent(scoped.step.message or "(no message)", " " * len(head)))
        lines += [f"  {never.line()}" for never in skipped]
        lines.append("")
    width = max((len(source.source) for source in run.sources), default=0)
    for source in run.sources:
        lines.append(_source_line(source, run, width))
        if source.consistency:
            lines.append(f"  {'':<{width}}  consistency window {consistency_summary(source.consistency)}")
    if not run.sources:
        lines.append("no source was drilled")
    lines += _check_lines(run)
    return "\n".join(lines) + "\n"


def _check_lines(run: DrillRun) -> list[str]:
    """Every drill check that ran, passed or not: the team's own terms for "it works"."""
    scoped = [(source.source, step) for source in run.sources for step in source.steps]
    scoped += [(f"drill {run.drill}", step) for step in run.steps]
    checks = [(scope, step) for scope, step in scoped if step.name.startswith(CHECK_PREFIX) and step.ran]
    if not checks:
        return []
    lines = ["", "Checks:"]
    for scope, step in checks:
        head = f"  {step.verdict.value:<5} {scope} / {step.name}: "
        lines.append(head + _indent(step.message or "(no message)", " " * len(head)))
    return lines


def _source_line(source: SourceRun, run: DrillRun, width: int) -> str:
    rto = source_rto(source, run.objectives.rto_seconds)
    rpo = against(source.rpo_seconds, run.objectives.rpo_seconds)
    snapshot = source.snapshot or "no snapshot"
    return f"  {source.source:<{width}}  {source.verdict.value:<5}  RTO {rto}, RPO {rpo}, {snapshot}"


def _indent(message: str, prefix: str) -> str:
    """Continuation lines of a multi-line message line up under its first line."""
    return ("\n" + prefix).join(message.strip().splitlines())


def _one_line(text: str) -> str:
    return " ".join(text.split())
