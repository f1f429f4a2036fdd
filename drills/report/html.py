"""The self-contained HTML report: one file, no script, no external asset.

It is the page a CI job keeps and the mail's attachment (the mail's own HTML part is
``drills.report.mail``). An on-call engineer must see in five seconds what failed and why: the
verdict banner (its figures in the banner's own colours), then "What went wrong" (each failed or
errored step with its source and message, linking to its row, and what never ran), then the rest.
It reads on a phone: tables scroll or stack inside their own box, never the page. ERROR is amber
with dark text and never green. Every value that came from a run (messages, names, census) is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from backup.sources.base import consistency_summary
from drills.model import REPORT_SCHEMA, DrillRun, SourceRun, Status, Step
from drills.report.charts import render_chart, render_verdict_strip, rpo_chart, rto_chart
from drills.report.common import (
    NOT_RUN,
    RUN_SCOPE,
    VERDICT_COLORS,
    ScopedStep,
    against,
    measured,
    not_run_steps,
    over,
    plural,
    restored,
    run_seconds,
    source_rto,
    unsuccessful_steps,
    verdict_meaning,
)
from drills.report.text import subject_line

HISTORY_RUNS = 30  # runs shown in the trend charts, the current one included

DOT = " \u00b7 "
STEPS_HEAD = (
    '<div class="scroll"><table class="steps"><thead><tr><th>Step</th><th>Verdict</th><th>Duration</th>'
    "<th>Message</th></tr></thead>\n<tbody>\n"
)
VERDICT_MARK = {Status.PASS: "\u2714", Status.FAIL: "\u2718", Status.ERROR: "\u26a0"}  # not colour alone
NOT_RUN_COLORS = ("#eaeef2", "#424a53")  # grey: neither a pass nor a cause
_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]+")

STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; overflow-wrap: anywhere; }
main { max-width: 1120px; margin: 0 auto; padding: 0 24px 32px; }
.banner { padding: 20px 24px; margin-bottom: 20px; }
.banner .verdict { font-size: 32px; font-weight: 700; letter-spacing: 0.04em; }
.banner .meaning { font-size: 16px; }
.banner .meta { margin-top: 6px; }
.banner .missed { font-weight: 700; text-decoration: underline; }
section { background: #ffffff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 18px; margin: 16px 0; }
#problems { border: 2px solid #cf222e; }
#problems.verdict-error { border-color: #9a6700; }
#problems ul { list-style: none; margin: 0; padding: 0; }
#problems li { padding: 6px 0; border-bottom: 1px solid #d8dee4; }
#problems li:last-child { border-bottom: 0; }
#problems li.not-run { color: #424a53; }
h2 { font-size: 18px; margin: 6px 0 10px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #d8dee4; }
th { background: #f6f8fa; font-weight: 600; }
table.steps { table-layout: fixed; }
table.steps th:nth-child(1) { width: 22%; }
table.steps th:nth-child(2), table.steps th:nth-child(3) { width: 11%; }
tr.not-run td { color: #57606a; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 700; font-size: 12px;
         white-space: nowrap; }
.message { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.4 ui-monospace, Menlo, monospace; }
.over { color: #cf222e; font-weight: 600; }
.facts { color: #57606a; margin: 0 0 10px; }
details > summary { cursor: pointer; color: #57606a; margin-bottom: 6px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { width: 100%; max-width: 500px; height: auto; }
.chart-title { font-size: 14px; font-weight: 600; fill: #1f2328; }
.tick, .legend { font-size: 11px; fill: #57606a; }
.grid { stroke: #d8dee4; stroke-width: 1; }
.objective-label { font-size: 11px; }
.no-data { font-size: 13px; fill: #57606a; }
footer { color: #57606a; font-size: 12px; text-align: center; padding: 12px; }
@media (max-width: 640px) {
  main { padding: 0 8px 24px; }
  .banner { padding: 14px 12px; margin-bottom: 12px; }
  .banner .verdict { font-size: 26px; }
  .banner .meaning { font-size: 15px; }
  section { padding: 10px 10px; margin: 10px 0; }
  /* each row a small card: no column squeezed to a letter a line, no header over the wrong cell */
  table.steps, table.steps tbody, table.steps tr, table.sources, table.sources tbody, table.sources tr { display: block; }
  table.steps thead, table.sources thead { display: none; }
  table.steps tr, table.sources tr { border-bottom: 1px solid #d8dee4; padding: 6px 0; }
  table.steps td, table.sources td { display: inline-block; border: 0; padding: 2px 8px 2px 0; }
  table.steps td:nth-child(4), table.sources td[data-label] { display: block; }
  table.sources td[data-label]::before { content: attr(data-label) ": "; color: #57606a; }
}
"""


def render_html(run: DrillRun, history: Sequence[DrillRun] = ()) -> str:
    """The report page for ``run``; ``history`` holds earlier runs of the drill for the trend charts.

    ``history`` may be empty, in any order, hold runs of other drills (ignored) or the run itself
    (counted once).
    """
    runs = trend_runs(run, history)
    body = [
        _banner(run),
        "<main>",
        _problems(run),
        _overview(run),
        _trends(run, runs),
        *(_source_section(run, source) for source in run.sources),
        _run_steps_section(run),
        "</main>",
        _footer(),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(subject_line(run))}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def trend_runs(run: DrillRun, history: Sequence[DrillRun]) -> list[DrillRun]:
    """The runs a trend chart shows: the same drill's, oldest first, the current one last, at most HISTORY_RUNS."""
    earlier = {past.run_id: past for past in history if past.drill == run.drill and past.run_id != run.run_id}
    ordered = sorted(earlier.values(), key=lambda past: past.started)
    return [*ordered, run][-HISTORY_RUNS:]


def badge(verdict: Status) -> str:
    """A small coloured verdict label; the colour is inline so mail clients keep it."""
    background, color = VERDICT_COLORS[verdict]
    return (
        f'<span class="badge verdict-{verdict.value.lower()}" style="background:{background};color:{color}">'
        f"{VERDICT_MARK[verdict]} {verdict.value}</span>"
    )


def step_badge(step: Step) -> str:
    """The verdict badge of a step that ran; a grey NOT RUN label for one that never ran."""
    if step.ran:
        return badge(step.verdict)
    background, color = NOT_RUN_COLORS
    return f'<span class="badge not-run" style="background:{background};color:{color}">\u2013 NOT RUN</span>'


def step_anchor(scope: str, name: str) -> str:
    """The id of a step's row: ``step-features-verify``; run-level steps ``run-step-teardown``."""
    if scope == RUN_SCOPE:
        return "run-step-" + _NOT_ID.sub("-", name)
    return f"step-{_NOT_ID.sub('-', scope)}-{_NOT_ID.sub('-', name)}"


def _banner(run: DrillRun) -> str:
    """The verdict, what it means and the headline figures, all in the banner's own text colour: an
    objective missed is said in words ("over by 7m02s") and underlined, never red on red."""
    background, color = VERDICT_COLORS[run.verdict]
    took = measured(run_seconds(run))
    rto = escape(against(run.rto_seconds, run.objectives.rto_seconds))
    if over(run.rto_seconds, run.objectives.rto_seconds):
        rto = f'<span class="missed">{rto}</span>'
    return (
        f'<header class="banner verdict-{run.verdict.value.lower()}" id="verdict-banner" role="status" '
        f'style="background:{background};color:{color}">\n'
        f'<div class="verdict">{VERDICT_MARK[run.verdict]} {run.verdict.value}</div>\n'
        f'<div class="meaning">Drill <strong>{escape(run.drill)}</strong>: {escape(verdict_meaning(run))}</div>\n'
        f'<div class="meta">{escape(plural(len(run.sources), "source"))}{DOT}RTO {rto}{DOT}'
        f"run {escape(run.run_id)}{DOT}started {escape(_when(run.started))}{DOT}took {escape(took)}</div>\n"
        "</header>"
    )


def _problems(run: DrillRun) -> str:
    """What went wrong, first: each failed or errored step (linking to its row), then what never ran."""
    causes, skipped = unsuccessful_steps(run), not_run_steps(run)
    if not causes and not skipped:
        return ""
    items = [_problem_item(scoped) for scoped in causes]
    for never in skipped:
        names = ", ".join(
            f'<a href="#{step_anchor(never.scope, step.name)}">{escape(step.name)}</a>' for step in never.steps
        )
        items.append(
            f'<li class="not-run">{step_badge(never.steps[0])} Not run on {escape(never.scope)}: {names} '
            f"({escape(never.reason)})</li>"
        )
    return (
        f'<section id="problems" class="verdict-{run.verdict.value.lower()}" data-block="problems">'
        f"<h2>What went wrong</h2>\n<ul>\n" + "\n".join(items) + "\n</ul></section>"
    )


def _problem_item(scoped: ScopedStep) -> str:
    step = scoped.step
    where = f"{scoped.scope} / {step.name}"
    return (
        f'<li>{badge(step.verdict)} <a href="#{step_anchor(scoped.scope, step.name)}">{escape(where)}</a>: '
        f'<pre class="message">{escape(step.message or "(no message)")}</pre></li>'
    )


def _overview(run: DrillRun) -> str:
    if not run.sources:
        return '<section id="overview" data-block="overview"><h2>Sources</h2><p>No source was drilled.</p></section>'
    rows = [
        "<tr>"
        f'<td><a href="#source-{escape(source.source)}">{escape(source.source)}</a></td>'
        f"<td>{escape(source.kind)}</td><td>{badge(source.verdict)}</td>"
        f'<td class="num" data-label="RTO">{_rto(source, run)}</td>'
        f'<td class="num" data-label="RPO">{_against(source.rpo_seconds, run.objectives.rpo_seconds)}</td>'
        f'<td data-label="Snapshot">{escape(source.snapshot or "none")}</td>'
        "</tr>"
        for source in run.sources
    ]
    return (
        '<section id="overview" data-block="overview"><h2>Sources</h2><div class="scroll"><table class="sources">\n'
        "<thead><tr><th>Source</th><th>Kind</th><th>Verdict</th><th>RTO</th><th>RPO (snapshot age)</th>"
        "<th>Snapshot</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div></section>"
    )


def _trends(run: DrillRun, runs: list[DrillRun]) -> str:
    if len(runs) < 2:  # a trend of one point says nothing; say so and give this run's figures
        figures = [f"total RTO {escape(measured(run.rto_seconds))}"] + [
            f"{escape(source.source)}: RTO {escape(_rto_figure(source, run))}, RPO {escape(measured(source.rpo_seconds))}"
            for source in run.sources
        ]
        return (
            '<section id="trends" data-block="trends"><h2>Trends</h2>\n'
            '<p class="facts">One run so far: the RTO and RPO charts start with the next run.</p>\n'
            f"<p>This run: {'; '.join(figures)}.</p></section>"
        )
    charts = [
        render_chart(rto_chart(runs, run.objectives.rto_seconds)),
        render_chart(rpo_chart(runs, run.objectives.rpo_seconds)),
    ]
    return (
        f'<section id="trends" data-block="trends"><h2>Trends over the last {escape(plural(len(runs), "run"))}</h2>\n'
        f'<p class="facts">Verdicts, oldest first: {render_verdict_strip(runs)}</p>\n'
        '<div class="charts">\n' + "\n".join(charts) + "\n</div></section>"
    )


def _source_section(run: DrillRun, source: SourceRun) -> str:
    facts = [
        f"kind {escape(source.kind)}",
        f"snapshot {escape(source.snapshot or 'none')}",
        f"RTO {_rto(source, run)}",
        f"RPO {_against(source.rpo_seconds, run.objectives.rpo_seconds)}",
    ]
    if source.census and restored(source):  # the snapshot's figures are what was restored only if it was
        facts.append("restored " + escape(_census(source.census)))
    if source.consistency:
        facts.append("consistency window " + escape(consistency_summary(source.consistency)))
    table = _steps_table(source.source, source.steps)
    if source.verdict is Status.PASS and run.verdict is not Status.PASS:  # keep the way to the causes short
        table = f"<details><summary>{escape(plural(len(source.steps), 'step'))}, all PASS</summary>{table}</details>"
    return (
        f'<section class="source" id="source-{escape(source.source)}" data-block="source">'
        f"<h2>{escape(source.source)} {badge(source.verdict)}</h2>\n"
        f'<p class="facts">{DOT.join(facts)}</p>\n{table}</section>'
    )


def _run_steps_section(run: DrillRun) -> str:
    if not run.steps:
        return ""
    return (
        f'<section id="run-steps" data-block="run-steps"><h2>Run-level steps</h2>\n'
        f"{_steps_table(RUN_SCOPE, run.steps)}</section>"
    )


def _steps_table(scope: str, steps: list[Step]) -> str:
    if not steps:
        return "<p>No step was recorded: nothing was verified.</p>"
    rows = [
        f'<tr class="step {_row_class(step)}" id="{step_anchor(scope, step.name)}"><td>{escape(step.name)}</td>'
        f"<td>{step_badge(step)}</td>"
        f'<td class="num">{escape(measured(step.seconds) if step.ran else chr(0x2014))}</td>'
        f'<td><pre class="message">{escape(step.message)}</pre></td></tr>'
        for step in steps
    ]
    return STEPS_HEAD + "\n".join(rows) + "\n</tbody></table></div>"


def _row_class(step: Step) -> str:
    return f"verdict-{step.verdict.value.lower()}" if step.ran else NOT_RUN.replace(" ", "-")


def _rto(source: SourceRun, run: DrillRun) -> str:
    """A source's RTO against the objective, marked when over, ``not run`` when its restore never ran."""
    text = source_rto(source, run.objectives.rto_seconds)
    if text == NOT_RUN:
        return NOT_RUN
    return _against(source.rto_seconds, run.objectives.rto_seconds)


def _rto_figure(source: SourceRun, run: DrillRun) -> str:
    """A source's bare RTO: ``2m10s``, ``not run``, ``n/a``."""
    return NOT_RUN if source_rto(source, run.objectives.rto_seconds) == NOT_RUN else measured(source.rto_seconds)


def _against(seconds: float | None, limit: float) -> str:
    """``4m12s of 30m objective``, marked when over the objective (on a white background)."""
    text = escape(against(seconds, limit))
    return f'<span class="over">{text}</span>' if over(seconds, limit) else text


def _census(census: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in census.items())


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _footer() -> str:
    generated = escape(_when(datetime.now(UTC)))
    return f"<footer>Lifeboat drill report{DOT}schema {REPORT_SCHEMA}{DOT}generated {generated}</footer>"
