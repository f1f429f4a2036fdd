"""The mail's HTML part: the drill report as mail clients render it.

Mail clients drop ``<style>``, media queries, SVG and script, and some cap the width of what they
show; so everything here is inline-styled, laid out in one column of tables at most 640 px wide
that are 100% of whatever is left, and every cell wraps. Failures come first, right under the
verdict banner; the trend charts become a small table of the last runs' RTO. The full page (with
the charts and every step) travels as an attachment (``lifeboat.notify.wording``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from drills.model import DrillRun, SourceRun, Status
from drills.report.common import (
    VERDICT_COLORS,
    against,
    measured,
    not_run_steps,
    objective,
    over,
    plural,
    run_seconds,
    source_rto,
    unsuccessful_steps,
    verdict_meaning,
)
from drills.report.html import NOT_RUN_COLORS, VERDICT_MARK, trend_runs
from drills.report.text import subject_line

LAST_RUNS = 10  # rows of the "Last runs" table
WIDTH = 640  # the card's widest; narrower screens get all of their width
TEXT, MUTED, BORDER, PAGE = "#1f2328", "#57606a", "#d0d7de", "#f6f8fa"
FONT = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:14px;line-height:1.45"
MONO = "font-family:Menlo,Consolas,monospace;font-size:12px;line-height:1.4"
WRAP = "word-break:break-word;overflow-wrap:anywhere"
TABLE = 'role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0"'
HEADING = f"margin:0 0 8px;font-size:17px;color:{TEXT}"
CELL = f"padding:12px 16px;border-top:1px solid {BORDER};{WRAP}"


def render_email_html(run: DrillRun, history: Sequence[DrillRun] = ()) -> str:
    """The HTML part of the drill mail for ``run``; ``history`` gives the last runs' table (as for
    ``render_html``: any order, other drills ignored)."""
    rows = [_banner(run), _problems(run), _sources(run), _last_runs(run, trend_runs(run, history)), _footer()]
    card = "\n".join(f"<tr>{row}</tr>" for row in rows if row)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(subject_line(run))}</title>\n</head>\n"
        f'<body style="margin:0;padding:0;background:{PAGE};">\n'
        f'<table {TABLE} style="background:{PAGE};"><tr><td align="center" style="padding:12px 6px;">\n'
        f'<table {TABLE} style="max-width:{WIDTH}px;width:100%;background:#ffffff;border:1px solid {BORDER};'
        f'border-collapse:separate;{FONT};color:{TEXT};text-align:left;">\n{card}\n</table>\n'
        "</td></tr></table>\n</body>\n</html>\n"
    )


def _badge(verdict: Status) -> str:
    background, color = VERDICT_COLORS[verdict]
    return (
        f'<span style="background:{background};color:{color};padding:1px 7px;border-radius:9px;'
        f'font-weight:bold;font-size:12px;white-space:nowrap;">{VERDICT_MARK[verdict]} {verdict.value}</span>'
    )


def _banner(run: DrillRun) -> str:
    """Every piece of text in the banner carries the banner's own text colour, so a client that
    restyles links or spans cannot put red on red."""
    background, color = VERDICT_COLORS[run.verdict]
    rto = escape(against(run.rto_seconds, run.objectives.rto_seconds))
    if over(run.rto_seconds, run.objectives.rto_seconds):
        rto = f'<u style="color:{color};">{rto}</u>'
    meta = f"{plural(len(run.sources), 'source')} \u00b7 run {run.run_id} \u00b7 took {measured(run_seconds(run))}"
    return (
        f'<td id="verdict-banner" style="background:{background};color:{color};'
        f'padding:16px 16px;{WRAP}">'
        f'<div style="font-size:26px;font-weight:bold;color:{color};">{VERDICT_MARK[run.verdict]} {run.verdict.value}</div>'
        f'<div style="font-size:15px;color:{color};">Drill <b>{escape(run.drill)}</b>: {escape(verdict_meaning(run))}</div>'
        f'<div style="margin-top:6px;color:{color};">RTO {rto}</div>'
        f'<div style="color:{color};">{escape(meta)}</div>'
        "</td>"
    )


def _problems(run: DrillRun) -> str:
    causes, skipped = unsuccessful_steps(run), not_run_steps(run)
    if not causes and not skipped:
        return ""
    items = [
        f'<p style="margin:0 0 10px;">{_badge(scoped.step.verdict)} <b>{escape(scoped.scope)} / '
        f"{escape(scoped.step.name)}</b>:<br>"
        f'<span style="{MONO};white-space:pre-wrap;{WRAP}">{escape(scoped.step.message or "(no message)")}</span></p>'
        for scoped in causes
    ]
    background, color = NOT_RUN_COLORS
    items += [
        f'<p style="margin:0 0 10px;color:{color};"><span style="background:{background};color:{color};'
        f'padding:1px 7px;border-radius:9px;font-weight:bold;font-size:12px;white-space:nowrap;">\u2013 NOT RUN</span> '
        f"Not run on {escape(never.scope)}: {escape(', '.join(step.name for step in never.steps))} "
        f"({escape(never.reason)})</p>"
        for never in skipped
    ]
    heading = f'<h2 style="{HEADING}">What went wrong</h2>'
    return f'<td id="problems" data-block="problems" style="{CELL}">{heading}{"".join(items)}</td>'


def _sources(run: DrillRun) -> str:
    """One stacked row per source (name and verdict, then its figures): it wraps on any screen."""
    if not run.sources:
        return f'<td data-block="sources" style="{CELL}"><h2 style="{HEADING}">Sources</h2>No source was drilled.</td>'
    rows = "".join(
        f'<tr><td style="padding:6px 0;border-bottom:1px solid {BORDER};{WRAP}">{_source(run, source)}</td></tr>'
        for source in run.sources
    )
    return (
        f'<td data-block="sources" style="{CELL}"><h2 style="{HEADING}">Sources</h2>'
        f'<table {TABLE} style="border-collapse:collapse;">{rows}</table></td>'
    )


def _source(run: DrillRun, source: SourceRun) -> str:
    rpo = escape(against(source.rpo_seconds, run.objectives.rpo_seconds))
    if over(source.rpo_seconds, run.objectives.rpo_seconds):
        rpo = f'<b style="color:#cf222e;">{rpo}</b>'
    rto = escape(source_rto(source, run.objectives.rto_seconds))
    if over(source.rto_seconds, run.objectives.rto_seconds):
        rto = f'<b style="color:#cf222e;">{rto}</b>'
    return (
        f"<b>{escape(source.source)}</b> ({escape(source.kind)}) {_badge(source.verdict)}<br>"
        f'<span style="color:{MUTED};">RTO</span> {rto}<br>'
        f'<span style="color:{MUTED};">RPO</span> {rpo}<br>'
        f'<span style="color:{MUTED};">snapshot</span> {escape(source.snapshot or "none")}'
    )


def _last_runs(run: DrillRun, runs: list[DrillRun]) -> str:
    """The charts' text fallback: the newest runs' verdict and total RTO, newest first."""
    heading = f'<h2 style="{HEADING}">Last runs</h2>'
    if len(runs) < 2:
        return (
            f'<td data-block="trend" style="{CELL}">{heading}One run so far: the trend starts with the next run '
            f"(this one: RTO {escape(measured(run.rto_seconds))}).</td>"
        )
    head = "".join(
        f'<td style="padding:4px 6px 4px 0;color:{MUTED};font-weight:bold;">{label}</td>'
        for label in ("Run", "Verdict", "RTO")
    )
    rows = "".join(
        f'<tr><td style="padding:3px 6px 3px 0;white-space:nowrap;">{past.started:%m-%d %H:%M}</td>'
        f'<td style="padding:3px 6px 3px 0;">{_badge(past.verdict)}</td>'
        f'<td style="padding:3px 0;">{escape(measured(past.rto_seconds))}</td></tr>'
        for past in reversed(runs[-LAST_RUNS:])
    )
    return (
        f'<td data-block="trend" style="{CELL}">{heading}'
        f'<table {TABLE} style="border-collapse:collapse;"><tr>{head}</tr>{rows}</table>'
        f'<p style="margin:8px 0 0;color:{MUTED};font-size:12px;">RTO objective '
        f"{escape(objective(run.objectives.rto_seconds))}; the attached report has the charts.</p></td>"
    )


def _footer() -> str:
    return (
        f'<td style="{CELL};color:{MUTED};font-size:12px;">The full report (every step, trend charts) is '
        "attached as HTML, with the JSON and JUnit reports.</td>"
    )
