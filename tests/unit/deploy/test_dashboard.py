"""The Grafana dashboard deploy/grafana/lifeboat.json: every query is PromQL that Prometheus's own
parser accepts (through promtool) and reads only metrics Lifeboat really exports (a real exposition
of lifeboat.metrics, see exported_metrics.py); it shows what the README promises."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from helpers import missing_requirement  # tests/ is on sys.path (rootdir conftest)
from prometheus_client.parser import text_string_to_metric_families

from lifeboat.metrics import VERDICT_VALUES

from .exported_metrics import exported_names, exposition, series_names

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "lifeboat.json"
NOT_LIFEBOATS = {"up"}
# Grafana's variables, replaced by what they stand for before Prometheus's parser sees a query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d", "$source": ".*", "$drill": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-z_:]+)\s*,\s*(?P<label>[a-z_]+)\)$")


@functools.cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


def test_every_data_panel_has_queries_on_the_chosen_prometheus() -> None:
    data_panels = [panel for panel in panels() if panel["type"] != "row"]
    assert len(data_panels) >= 10
    titles = [panel["title"] for panel in data_panels]
    assert len(set(titles)) == len(titles), "two panels share a title"
    for panel in data_panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


def test_every_query_reads_only_metrics_lifeboat_exports() -> None:
    exported = exported_names() | NOT_LIFEBOATS
    for title, expression in queries():
        read = series_names(expression)
        assert read, f"{title}: {expression} reads no metric"
        assert read <= exported, f"panel {title!r} reads {sorted(read - exported)}, which Lifeboat does not export"


def test_the_filters_list_label_values_lifeboat_exports() -> None:
    labels = {
        family.name: {label for sample in family.samples for label in sample.labels}
        for family in text_string_to_metric_families(exposition())
    }
    filters = [variable for variable in dashboard()["templating"]["list"] if variable["type"] == "query"]
    assert {variable["name"] for variable in filters} == {"source", "drill"}
    for variable in filters:
        found = LABEL_VALUES.match(variable["query"]["query"])
        assert found, variable["query"]
        assert found["label"] in labels.get(found["metric"], set()), (
            f"{variable['name']}: {found['metric']} has no such label"
        )


def test_every_query_is_promql_that_prometheus_parses(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        missing_requirement("promtool is not on PATH (Debian package: prometheus; see .ci/system-deps.sh)")
    records = []
    for number, (_, expression) in enumerate(queries()):
        for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
            expression = expression.replace(variable, GRAFANA_VARIABLES[variable])
        assert "$" not in expression, f"a Grafana variable this test does not know: {expression}"
        records.append({"record": f"dashboard:query_{number}", "expr": expression})
    rules = tmp_path / "dashboard-queries.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_freshness_verdicts_objectives_durations_and_suspicious_snapshots() -> None:
    read = {name for _, expression in queries() for name in series_names(expression)}
    promised = {
        "backup freshness against the schedule": {
            "lifeboat_last_success_timestamp_seconds",
            "lifeboat_backup_schedule_interval_seconds",
        },
        "drill verdicts": {"lifeboat_drill_verdict"},
        "RTO against its objective": {"lifeboat_drill_rto_seconds", "lifeboat_drill_rto_objective_seconds"},
        "RPO against its objective": {"lifeboat_drill_rpo_seconds", "lifeboat_drill_rpo_objective_seconds"},
        "job durations": {"lifeboat_job_duration_seconds_bucket", "lifeboat_backup_duration_seconds"},
        "suspicious snapshots": {"lifeboat_suspicious_snapshots", "lifeboat_last_backup_suspicious"},
    }
    for what, names in promised.items():
        assert names <= read, f"no panel shows {what} ({sorted(names - read)})"


def test_the_verdict_panel_names_the_values_lifeboat_exports() -> None:
    [panel] = [panel for panel in panels() if panel["title"] == "Drill verdicts"]
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    shown = {float(value): option["text"] for value, option in mapping["options"].items()}
    assert shown == {value: status.value for status, value in VERDICT_VALUES.items()}


def test_panels_do_not_overlap_on_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in cells, f"{panel['title']!r} overlaps {cells[(row, column)]!r}"
                cells[(row, column)] = panel["title"]
