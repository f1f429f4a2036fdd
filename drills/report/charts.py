"""Inline SVG trend charts for the HTML report: RTO and snapshot age (RPO) over the last runs.

Plain SVG written by hand: no script, no external asset, so the page renders the same in a browser,
a CI artifact viewer or a file opened months later. Every point carries a ``<title>`` tooltip with
its value. A run that did not measure a value leaves a gap in its line rather than a fake zero.

The y axis is scaled to the data, so sub-second restores still show their ups and downs; the
objective is a dashed line when it is near the data, and a note above the plot when it is far above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from drills.model import DrillRun, SourceRun
from drills.report.common import VERDICT_COLORS, measured, objective

WIDTH = 500  # two charts side by side in the page's 1120 px column
LEFT, RIGHT, TOP = 64, 20, 34  # room for the y labels and the title
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, 160
LEGEND_TOP = TOP + PLOT_H + 40  # below the x labels
LEGEND_ROW = 18
MAX_X_LABELS = 6
# Blues, purples and browns: red, green and amber mean verdicts on this page and stay reserved.
PALETTE = ("#0969da", "#8250df", "#1b7c83", "#9a6700", "#bf3989", "#6e7781", "#0550ae", "#953800")
TOTAL_COLOR = "#24292f"
OBJECTIVE_COLOR = "#cf222e"
# Gridline steps a reader can take in at a glance, in seconds: 10ms .. 1w.
NICE_STEPS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
)
MAX_TICKS = 5
OBJECTIVE_IN_SCALE = 2.0  # an objective up to this many times the highest value is drawn; above, it is noted


@dataclass(frozen=True)
class Series:
    """One line of a chart: a value (seconds) per run, None where the run did not measure it."""

    name: str
    values: list[float | None]
    color: str
    width: float = 2.0


@dataclass(frozen=True)
class Chart:
    """A time chart over runs: x = runs (oldest first), y = seconds, a dashed objective line."""

    chart_id: str
    title: str
    runs: list[DrillRun]
    series: list[Series]
    objective_seconds: float | None


def rto_chart(runs: Sequence[DrillRun], objective_seconds: float) -> Chart:
    """RTO per source and, with several sources, the total, over ``runs`` (oldest first)."""
    series = _per_source(runs, lambda source: source.rto_seconds)
    if len(series) > 1:
        series.append(Series("total", [run.rto_seconds for run in runs], TOTAL_COLOR, width=3.0))
    return Chart("rto-chart", "Restore time (RTO)", list(runs), series, objective_seconds)


def rpo_chart(runs: Sequence[DrillRun], objective_seconds: float) -> Chart:
    """Age of the newest good snapshot (RPO) per source over ``runs`` (oldest first)."""
    series = _per_source(runs, lambda source: source.rpo_seconds)
    return Chart("rpo-chart", "Snapshot age (RPO)", list(runs), series, objective_seconds)


def _per_source(runs: Sequence[DrillRun], value: Callable[[SourceRun], float | None]) -> list[Series]:
    names: list[str] = []
    for run in reversed(runs):  # the newest run's sources first: they are the ones that matter now
        names += [source.source for source in run.sources if source.source not in names]
    series = []
    for index, name in enumerate(names):
        values = [_source_value(run, name, value) for run in runs]
        series.append(Series(name, values, PALETTE[index % len(PALETTE)]))
    return series


def _source_value(run: DrillRun, name: str, value: Callable[[SourceRun], float | None]) -> float | None:
    found = [value(source) for source in run.sources if source.source == name]
    return found[0] if found else None


def render_chart(chart: Chart) -> str:
    """The chart as an inline ``<svg>`` element."""
    points = sum(value is not None for series in chart.series for value in series.values)
    scale = _scale(chart)
    legend, legend_rows = _legend(chart)
    height = LEGEND_TOP + LEGEND_ROW * legend_rows
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart.chart_id}" class="chart" role="img" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'data-runs="{len(chart.runs)}" data-points="{points}" aria-labelledby="{chart.chart_id}-title">',
        f'<title id="{chart.chart_id}-title">{escape(chart.title)} over the last {len(chart.runs)} runs</title>',
        f'<text x="{LEFT}" y="20" class="chart-title">{escape(chart.title)}</text>',
        *_grid(scale),
        *_x_labels(chart.runs, scale),
        *_objective_line(chart, scale),
        *(_series(series, chart.runs, scale) for series in chart.series),
        *legend,
    ]
    if points == 0:
        parts.append(
            f'<text x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle" class="no-data">'
            "no measurement yet</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def render_verdict_strip(runs: Sequence[DrillRun]) -> str:
    """One coloured square per run, oldest first: the drill's recent history at a glance."""
    size, gap = 16, 4
    width = max(len(runs) * (size + gap), size)
    squares = []
    for index, run in enumerate(runs):
        color = VERDICT_COLORS[run.verdict][0]
        label = f"{run.started.isoformat(timespec='minutes')} {run.run_id}: {run.verdict.value}"
        squares.append(
            f'<rect x="{index * (size + gap)}" y="0" width="{size}" height="{size}" rx="3" fill="{color}" '
            f'class="verdict-{run.verdict.value.lower()}"><title>{escape(label)}</title></rect>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="verdict-strip" role="img" width="{width}" height="{size}" '
        f'viewBox="0 0 {width} {size}" aria-label="verdicts of the last {len(runs)} runs">' + "".join(squares) + "</svg>"
    )


@dataclass(frozen=True)
class _Scale:
    runs: int
    top: float  # seconds at the top of the y axis: a whole number of steps
    step: float  # seconds between gridlines

    def x(self, index: int) -> float:
        if self.runs <= 1:
            return LEFT + PLOT_W / 2
        return LEFT + PLOT_W * index / (self.runs - 1)

    def y(self, seconds: float) -> float:
        return TOP + PLOT_H * (1 - min(seconds, self.top) / self.top)


def _scale(chart: Chart) -> _Scale:
    """A y axis from 0 to a little above the largest value, in nice steps; it reaches up to the
    objective too when the objective is near (within OBJECTIVE_IN_SCALE times the largest value)."""
    values = [value for series in chart.series for value in series.values if value is not None]
    highest = max(values, default=0.0)
    if chart.objective_seconds is not None and (highest <= 0 or chart.objective_seconds <= OBJECTIVE_IN_SCALE * highest):
        highest = max(highest, chart.objective_seconds)
    wanted = max(highest * 1.05, NICE_STEPS[0])  # headroom: a point on the top edge is hard to read
    step = next((nice for nice in NICE_STEPS if wanted / nice <= MAX_TICKS), None)
    if step is None:
        step = math.ceil(wanted / MAX_TICKS / NICE_STEPS[-1]) * NICE_STEPS[-1]
    return _Scale(len(chart.runs), max(step, math.ceil(round(wanted / step, 6)) * step), step)


def _grid(scale: _Scale) -> list[str]:
    parts = []
    for index in range(round(scale.top / scale.step) + 1):
        tick = index * scale.step
        y = scale.y(tick)
        label = _tick_label(tick, scale.step)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{label}</text>')
    return parts


def _tick_label(seconds: float, step: float) -> str:
    """An axis label: ``0``, ``0.25s``, ``0.5s``, ``30s``, ``5m``, ``1h30m``, ``18h``, ``1w``."""
    if seconds <= 0:
        return "0"
    if step < 1:
        return f"{seconds:.{1 if step >= 0.1 else 2}f}s"
    return objective(round(seconds))


def value_label(seconds: float) -> str:
    """A measured value precise enough to tell sub-second runs apart: ``0.26s``, ``4.2s``, ``4m12s``."""
    return f"{seconds:.2f}s" if seconds < 1 else measured(seconds)


def _x_labels(runs: list[DrillRun], scale: _Scale) -> list[str]:
    if not runs:
        return []
    every = max(1, math.ceil(len(runs) / MAX_X_LABELS))
    shown = set(range(0, len(runs), every)) | {len(runs) - 1}
    parts = []
    for index in sorted(shown):
        anchor = "middle" if len(runs) == 1 else "start" if index == 0 else "end" if index == len(runs) - 1 else "middle"
        label = runs[index].started.strftime("%m-%d %H:%M")
        parts.append(
            f'<text x="{scale.x(index):.1f}" y="{TOP + PLOT_H + 16}" text-anchor="{anchor}" class="tick">{label}</text>'
        )
    return parts


def _objective_line(chart: Chart, scale: _Scale) -> list[str]:
    """The objective as a dashed line, or, when it is far above the data, a note above the plot."""
    if chart.objective_seconds is None:
        return []
    label = f"objective {objective(chart.objective_seconds)}"
    if chart.objective_seconds > scale.top:
        return [
            f'<text x="{LEFT + PLOT_W}" y="20" text-anchor="end" class="objective-label" fill="{OBJECTIVE_COLOR}">'
            f"\u25b2 {escape(label)}, above the chart<title>{escape(label)}: far above every value shown"
            "</title></text>"
        ]
    y = scale.y(chart.objective_seconds)
    return [
        f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" class="objective" '
        f'stroke="{OBJECTIVE_COLOR}" stroke-width="1.5" stroke-dasharray="6 4"><title>{escape(label)}</title></line>',
        f'<text x="{LEFT + 4}" y="{y - 5:.1f}" class="objective-label" '  # left: the newest points sit right
        f'fill="{OBJECTIVE_COLOR}">{escape(label)}</text>',
    ]


def _series(series: Series, runs: list[DrillRun], scale: _Scale) -> str:
    """A polyline per unbroken stretch of measured values, and a dot with a tooltip per value."""
    parts = [f'<g class="series" data-series="{escape(series.name)}">']
    stretch: list[str] = []
    for index, value in enumerate([*series.values, None]):  # the trailing None flushes the last stretch
        if value is None:
            if len(stretch) > 1:
                parts.append(
                    f'<polyline points="{" ".join(stretch)}" fill="none" stroke="{series.color}" '
                    f'stroke-width="{series.width}" stroke-linejoin="round"/>'
                )
            stretch = []
            continue
        x, y = scale.x(index), scale.y(value)
        stretch.append(f"{x:.1f},{y:.1f}")
        tip = f"{runs[index].started.isoformat(timespec='minutes')} {series.name}: {value_label(value)}"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{series.color}" class="point">'
            f"<title>{escape(tip)}</title></circle>"
        )
    parts.append("</g>")
    return "".join(parts)


def _legend(chart: Chart) -> tuple[list[str], int]:
    """The legend's SVG parts and how many rows it took (it wraps rather than run off the edge)."""
    parts = []
    x, row = LEFT, 0
    for series in chart.series:
        needed = 28 + 7 * len(series.name)  # swatch + gap + about 7 px per character at 12 px
        if x + needed > WIDTH - RIGHT and x > LEFT:
            x, row = LEFT, row + 1
        y = LEGEND_TOP + row * LEGEND_ROW - 4
        parts.append(f'<rect x="{x}" y="{y - 5}" width="12" height="4" fill="{series.color}"/>')
        parts.append(f'<text x="{x + 16}" y="{y}" class="legend">{escape(series.name)}</text>')
        x += needed
    return parts, row + 1
