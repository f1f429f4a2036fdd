"""The compliance report over a period (``lifeboat evidence report``, issue 17): per drill and source,
every restore test with its verdict, RTO and RPO against the objectives, whether it ran on segregated
scratch, and its evidence record; the longest gap between successful restore tests; the sources
never drilled in the period; and what this shows for DORA Art. 12, ISO 27001 A.8.13 and SOC 2.

``build_compliance`` is pure (drill runs from the stored reports, evidence records from
``drills.evidence``); ``render_json``, ``render_csv`` and ``render_html`` write its document. The HTML
page is self-contained (no script, no fetched file) and prints on A4 / Letter.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from drills.model import DrillRun, Status
from policies.durations import human_duration

COMPLIANCE_SCHEMA = "lifeboat.compliance-report/v1"
CONTROLS = [
    {
        "control": "DORA Art. 12 (backup policies, restoration and recovery)",
        "shown": "Backups are restored and checked periodically, on scratch systems segregated from the "
        "source; each test's result, restore time (RTO) and data age (RPO) are recorded against objectives.",
    },
    {
        "control": "ISO/IEC 27001:2022 A.8.13 (information backup)",
        "shown": "Backup copies are tested regularly: every restore test is listed with its verdict, and "
        "gaps between successful tests and sources never tested are named.",
    },
    {
        "control": "SOC 2 A1.3 / CC7.5 (availability: recovery plan testing, recovery)",
        "shown": "Recovery is tested and its evidence kept: each test has a signed, chained evidence record "
        "that `lifeboat evidence verify` checks with the public key alone.",
    },
]
CSV_COLUMNS = [
    "drill",
    "source",
    "run_id",
    "started",
    "verdict",
    "rto_seconds",
    "rto_objective_seconds",
    "rto_met",
    "rpo_seconds",
    "rpo_objective_seconds",
    "rpo_met",
    "segregated",
    "scratch",
    "evidence",
]


def build_compliance(
    runs: Iterable[DrillRun],
    records: Iterable[Mapping[str, Any]],
    *,
    drills: Mapping[str, Sequence[str]],
    sources: Sequence[str],
    since: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The report's document: ``runs`` started in [since, now] grouped per drill and source (the drills
    of the policy, ``drills``, and any other with runs in the period), with their evidence ``records``
    (joined by drill and run id)."""
    evidence = {(record["drill"], record["run_id"]): record for record in records}
    in_period = sorted((run for run in runs if since <= run.started <= now), key=lambda run: run.started)
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {source: [] for source in drill_sources} for name, drill_sources in drills.items()
    }
    for run in in_period:
        record = evidence.get((run.drill, run.run_id))
        for source in run.sources:
            grouped.setdefault(run.drill, {}).setdefault(source.source, []).append(_row(run, source, record))
    drilled = {source for by_source in grouped.values() for source, rows in by_source.items() if rows}
    return {
        "schema": COMPLIANCE_SCHEMA,
        "generated": now.isoformat(),
        "period": {"from": since.isoformat(), "to": now.isoformat()},
        "drills": [
            {
                "drill": drill,
                "sources": [
                    {"source": source, "runs": rows, **_summary(rows, since=since, now=now)}
                    for source, rows in by_source.items()
                ],
            }
            for drill, by_source in grouped.items()
        ],
        "never_drilled": [source for source in sources if source not in drilled],
        "controls": CONTROLS,
    }


def _row(run: DrillRun, source: Any, record: Mapping[str, Any] | None) -> dict[str, Any]:
    rto_objective, rpo_objective = run.objectives.rto_seconds, run.objectives.rpo_seconds
    scratch = (record or {}).get("scratch") or {}
    return {
        "run_id": run.run_id,
        "started": run.started.isoformat(),
        "verdict": source.verdict.value,
        "rto_seconds": source.rto_seconds,
        "rto_objective_seconds": rto_objective,
        "rto_met": None if source.rto_seconds is None else source.rto_seconds <= rto_objective,
        "rpo_seconds": source.rpo_seconds,
        "rpo_objective_seconds": rpo_objective,
        "rpo_met": None if source.rpo_seconds is None else source.rpo_seconds <= rpo_objective,
        "segregated": None if "shares_server_with_source" not in scratch else not scratch["shares_server_with_source"],
        "scratch": scratch.get("kind"),
        "evidence": _evidence(record),
    }


def _evidence(record: Mapping[str, Any] | None) -> str | None:
    """How the test's evidence record is named: its place in the drill's chain."""
    if record is None or record.get("sequence") is None:
        return None
    return f"record {record['sequence']} of chain {record['drill']}"


def _summary(rows: list[dict[str, Any]], *, since: datetime, now: datetime) -> dict[str, Any]:
    """Successful tests and the longest gap between them (the last one to ``now`` counts, as open)."""
    passes = [datetime.fromisoformat(row["started"]) for row in rows if row["verdict"] == Status.PASS.value]
    if not passes:
        gap = {"from": since.isoformat(), "to": now.isoformat(), "seconds": (now - since).total_seconds(), "open": True}
        return {"successful": 0, "longest_gap": gap}
    moments = [*passes, now]
    pairs = list(itertools.pairwise(moments))
    start, end = max(pairs, key=lambda pair: pair[1] - pair[0])
    gap = {"from": start.isoformat(), "to": end.isoformat(), "seconds": (end - start).total_seconds(), "open": end == now}
    return {"successful": len(passes), "longest_gap": gap}


# ---- rendering -----------------------------------------------------------------------------------------


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def render_csv(document: dict[str, Any]) -> str:
    """One row per restore test; a source never drilled in the period is a row with verdict ``NOT DRILLED``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for drill in document["drills"]:
        for source in drill["sources"]:
            for row in source["runs"]:
                writer.writerow({"drill": drill["drill"], "source": source["source"], **_csv_values(row)})
    for source in document["never_drilled"]:
        writer.writerow({"source": source, "verdict": "NOT DRILLED"})
    return out.getvalue()


def _csv_values(row: dict[str, Any]) -> dict[str, Any]:
    def cell(value: Any) -> Any:
        if value is None:
            return ""
        return str(value).lower() if isinstance(value, bool) else value

    return {key: cell(value) for key, value in row.items()}


_CSS = """
body{font:14px/1.45 "Liberation Sans",Arial,sans-serif;color:#1b1b1b;margin:24px;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:14px 0 4px}.muted{color:#555}
table{border-collapse:collapse;width:100%;margin:6px 0 10px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;font-size:12.5px;vertical-align:top}
th{background:#eee}.PASS{color:#0a6b2a;font-weight:bold}.FAIL,.ERROR{color:#b00020;font-weight:bold}
.warn{color:#b00020}.gap{margin:2px 0 8px}
@media print{body{margin:0;max-width:none;font-size:11px}h2{break-after:avoid}table{break-inside:auto}
tr{break-inside:avoid}th{background:#eee;-webkit-print-color-adjust:exact;print-color-adjust:exact}}
@page{size:A4;margin:14mm}
"""


def render_html(document: dict[str, Any]) -> str:
    """The report as one self-contained page that prints well."""
    e = html.escape
    period = document["period"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Lifeboat restore-test report {e(period['from'][:10])} to {e(period['to'][:10])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Restore-test evidence report</h1>",
        f"<p class='muted'>Period {e(period['from'][:16])} to {e(period['to'][:16])} UTC; generated "
        f"{e(document['generated'][:16])} UTC by Lifeboat.</p>",
        "<h2>What this shows</h2><table><tr><th>Control</th><th>How these tests meet it</th></tr>",
        *(f"<tr><td>{e(c['control'])}</td><td>{e(c['shown'])}</td></tr>" for c in document["controls"]),
        "</table>",
    ]
    never = document["never_drilled"]
    parts.append(
        f"<p class='warn'><b>Sources never drilled in the period:</b> {e(', '.join(never))}</p>"
        if never
        else "<p>Every source was drilled in the period.</p>"
    )
    for drill in document["drills"]:
        parts.append(f"<h2>Drill {e(drill['drill'])}</h2>")
        for source in drill["sources"]:
            parts.append(f"<h3>Source {e(source['source'])}</h3>")
            gap = source["longest_gap"]
            still = " (still open)" if gap["open"] else ""
            span = f"{e(gap['from'][:16])} to {e(gap['to'][:16])}{still}"
            parts.append(
                f"<p class='gap'>{source['successful']} successful restore test(s); longest gap between successful "
                f"tests: <b>{e(_long(gap['seconds']))}</b>, {span}.</p>"
            )
            if not source["runs"]:
                parts.append("<p class='warn'>No restore test in the period.</p>")
                continue
            parts.append(
                "<table><tr><th>Started (UTC)</th><th>Run</th><th>Verdict</th><th>RTO / objective</th>"
                "<th>RPO / objective</th><th>Segregated scratch</th><th>Evidence</th></tr>"
            )
            parts += [_html_row(row) for row in source["runs"]]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_row(row: dict[str, Any]) -> str:
    e = html.escape
    segregated = {True: f"yes ({row['scratch']})", False: "NO: shares a server with a source", None: "unknown"}
    return (
        f"<tr><td>{e(row['started'][:19].replace('T', ' '))}</td><td>{e(row['run_id'])}</td>"
        f"<td class='{e(row['verdict'])}'>{e(row['verdict'])}</td>"
        f"<td>{_against(row['rto_seconds'], row['rto_objective_seconds'], row['rto_met'])}</td>"
        f"<td>{_against(row['rpo_seconds'], row['rpo_objective_seconds'], row['rpo_met'])}</td>"
        f"<td>{e(segregated[row['segregated']])}</td><td>{e(row['evidence'] or 'none')}</td></tr>"
    )


def _long(seconds: float) -> str:
    """A gap in days (``40.5 days``) once it is two days or more."""
    days = seconds / 86400
    return f"{days:.1f} days".replace(".0 days", " days") if days >= 2 else human_duration(seconds)


def _against(value: float | None, objective: float, met: bool | None) -> str:
    if value is None:
        return f"not measured / {html.escape(human_duration(objective))}"
    mark = "met" if met else "<span class='warn'>missed</span>"
    return f"{html.escape(human_duration(value))} / {html.escape(human_duration(objective))} ({mark})"
