"""The self-contained HTML report: one file, no script, no external asset.

It is the mail's HTML part and the page a CI job keeps, so it must read well offline and in mail
clients that drop ``<style>``: verdict colours are also inline. ERROR is amber with dark text and
never green. Every value that came from a run (messages, names, census) is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from backup.sources.base import consistency_summary
from drills.model import REPORT_SCHEMA, DrillRun, SourceRun, Status, Step
from drills.report.charts import render_chart, render_verdict_strip, rpo_chart, rto_chart
from drills.report.common import VERDICT_COLORS, VERDICT_MEANING, against, measured, over, plural, run_seconds
from drills.report.text import subject_line

HISTORY_RUNS = 30  # runs shown in the trend charts, the current one included

DOT = " \u00b7 "
STEPS_HEAD = (
    '<table class="steps"><thead><tr><th>Step</th><th>Verdict</th><th>Duration</th><th>Message</th></tr></thead>\n<tbody>\n'
)
VERDICT_MARK = {Status.PASS: "\u2714", Status.FAIL: "\u2718", Status.ERROR: "\u26a0"}  # not colour alone

STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 0 24px 32px; }
.banner { padding: 20px 24px; margin-bottom: 20px; }
.banner .verdict { font-size: 32px; font-weight: 700; letter-spacing: 0.04em; }
.banner .meaning { font-size: 16px; }
.banner .meta { margin-top: 6px; opacity: 0.92; }
section { background: #ffffff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 18px; margin: 16px 0; }
h2 { font-size: 18px; margin: 6px 0 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #d8dee4; }
th { background: #f6f8fa; font-weight: 600; }
table.steps { table-layout: fixed; }
table.steps th:nth-child(1) { width: 22%; }
table.steps th:nth-child(2), table.steps th:nth-child(3) { width: 10%; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 700; font-size: 12px; }
.message { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.4 ui-monospace, Menlo, monospace; }
.over { color: #cf222e; font-weight: 600; }
.facts { color: #57606a; margin: 0 0 10px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart-title { font-size: 14px; font-weight: 600; fill: #1f2328; }
.tick, .legend { font-size: 11px; fill: #57606a; }
.grid { stroke: #d8dee4; stroke-width: 1; }
.objective-label { font-size: 11px; }
.no-data { font-size: 13px; fill: #57606a; }
footer { color: #57606a; font-size: 12px; text-align: center; padding: 12px; }
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


def _banner(run: DrillRun) -> str:
    background, color = VERDICT_COLORS[run.verdict]
    took = measured(run_seconds(run))
    return (
        f'<header class="banner verdict-{run.verdict.value.lower()}" role="status" '
        f'style="background:{background};color:{color}">\n'
        f'<div class="verdict">{VERDICT_MARK[run.verdict]} {run.verdict.value}</div>\n'
        f'<div class="meaning">Drill <strong>{escape(run.drill)}</strong>: {escape(VERDICT_MEANING[run.verdict])}</div>\n'
        f'<div class="meta">{escape(plural(len(run.sources), "source"))} \u00b7 '
        f"RTO {_against(run.rto_seconds, run.objectives.rto_seconds)} \u00b7 "
        f"run {escape(run.run_id)} \u00b7 started {escape(_when(run.started))} \u00b7 took {escape(took)}</div>\n"
        "</header>"
    )


def _overview(run: DrillRun) -> str:
    if not run.sources:
        return "<section><h2>Sources</h2><p>No source was drilled.</p></section>"
    rows = [
        "<tr>"
        f'<td><a href="#source-{escape(source.source)}">{escape(source.source)}</a></td>'
        f"<td>{escape(source.kind)}</td><td>{badge(source.verdict)}</td>"
        f'<td class="num">{_against(source.rto_seconds, run.objectives.rto_seconds)}</td>'
        f'<td class="num">{_against(source.rpo_seconds, run.objectives.rpo_seconds)}</td>'
        f"<td>{escape(source.snapshot or 'none')}</td>"
        "</tr>"
        for source in run.sources
    ]
    return (
        '<section id="overview"><h2>Sources</h2><table>\n'
        "<thead><tr><th>Source</th><th>Kind</th><th>Verdict</th><th>RTO</th><th>RPO (snapshot age)</th>"
        "<th>Snapshot</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></section>"
    )


def _trends(run: DrillRun, runs: list[DrillRun]) -> str:
    charts = [
        render_chart(rto_chart(runs, run.objectives.rto_seconds)),
        render_chart(rpo_chart(runs, run.objectives.rpo_seconds)),
    ]
    return (
        f'<section id="trends"><h2>Trends over the last {escape(plural(len(runs), "run"))}</h2>\n'
        f'<p class="facts">Verdicts, oldest first: {render_verdict_strip(runs)}</p>\n'
        '<div class="charts">\n' + "\n".join(charts) + "\n</div></section>"
    )


def _source_section(run: DrillRun, source: SourceRun) -> str:
    facts = [
        f"kind {escape(source.kind)}",
        f"snapshot {escape(source.snapshot or 'none')}",
        f"RTO {_against(source.rto_seconds, run.objectives.rto_seconds)}",
        f"RPO {_against(source.rpo_seconds, run.objectives.rpo_seconds)}",
    ]
    if source.census:
        facts.append("restored " + escape(_census(source.census)))
    if source.consistency:
        facts.append("consistency window " + escape(consistency_summary(source.consistency)))
    return (
        f'<section class="source" id="source-{escape(source.source)}">'
        f"<h2>{escape(source.source)} {badge(source.verdict)}</h2>\n"
        f'<p class="facts">{DOT.join(facts)}</p>\n{_steps_table(source.steps)}</section>'
    )


def _run_steps_section(run: DrillRun) -> str:
    if not run.steps:
        return ""
    return f'<section id="run-steps"><h2>Run-level steps</h2>\n{_steps_table(run.steps)}</section>'


def _steps_table(steps: list[Step]) -> str:
    if not steps:
        return "<p>No step was recorded: nothing was verified.</p>"
    rows = [
        f'<tr class="step verdict-{step.verdict.value.lower()}"><td>{escape(step.name)}</td><td>{badge(step.verdict)}</td>'
        f'<td class="num">{escape(measured(step.seconds))}</td>'
        f'<td><pre class="message">{escape(step.message)}</pre></td></tr>'
        for step in steps
    ]
    return STEPS_HEAD + "\n".join(rows) + "\n</tbody></table>"


def _against(seconds: float | None, limit: float) -> str:
    """``4m12s of 30m objective``, marked when over the objective."""
    text = escape(against(seconds, limit))
    return f'<span class="over">{text} (over)</span>' if over(seconds, limit) else text


def _census(census: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in census.items())


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _footer() -> str:
    generated = escape(_when(datetime.now(UTC)))
    return f"<footer>Lifeboat drill report{DOT}schema {REPORT_SCHEMA}{DOT}generated {generated}</footer>"
