"""The alert rules in deploy/: deploy/prometheus/lifeboat-rules.yaml, checked and unit-tested by
Prometheus's own promtool (Debian package prometheus) on the synthetic series of
lifeboat-rules.test.yaml; the same groups in the prometheus-operator's PrometheusRule
(deploy/kubernetes/monitoring/); every series name they read is one Lifeboat really exports."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import missing_requirement  # tests/ is on sys.path (rootdir conftest)

from .exported_metrics import exported_names, series_names

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "lifeboat-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "lifeboat-rules.test.yaml"
MONITORING = ROOT / "deploy" / "kubernetes" / "monitoring"
DEPLOY_README = ROOT / "deploy" / "README.md"
NOT_LIFEBOATS = {"up"}  # what Prometheus itself records about the scrape
ALERTS = (
    "LifeboatBackupOverdue",
    "LifeboatDrillNotPassing",
    "LifeboatDrillRPOOverObjective",
    "LifeboatDrillRTOOverObjective",
    "LifeboatSuspiciousSnapshot",
    "LifeboatCheckFailing",
    "LifeboatDown",
)


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@functools.cache
def rules() -> dict[str, dict[str, Any]]:
    """alert name -> rule, from the plain rules file."""
    return {rule["alert"]: rule for group in load(RULES)["groups"] for rule in group["rules"]}


def promtool(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        missing_requirement("promtool is not on PATH (Debian package: prometheus; see .ci/system-deps.sh)")
    return subprocess.run(["promtool", *map(str, arguments)], capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_file_holds_the_alerts_the_readme_documents() -> None:
    assert tuple(rules()) == ALERTS
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _mutated_rules_fail_the_unit_tests(tmp_path: Path, alert: str, expression: str) -> str:
    """Run the unit tests against the rules with ``alert``'s expression replaced; return promtool's
    complaint (the test fails when promtool does not)."""
    document = load(RULES)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = expression
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0, f"the unit tests did not notice {alert} with expr {expression!r}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_is_seen_firing_and_seen_quiet_by_the_unit_tests(tmp_path: Path, alert: str) -> None:
    never = _mutated_rules_fail_the_unit_tests(tmp_path, alert, "vector(1) == 0")
    assert f"alertname: {alert}" in never
    always = _mutated_rules_fail_the_unit_tests(tmp_path, alert, f"({rules()[alert]['expr']}) or vector(1)")
    assert f"alertname: {alert}" in always


def test_rules_and_their_test_series_name_only_metrics_lifeboat_exports() -> None:
    exported = exported_names() | NOT_LIFEBOATS
    for alert, rule in rules().items():
        read = series_names(rule["expr"])
        assert read, alert
        assert read <= exported, f"{alert} reads {sorted(read - exported)}, which Lifeboat does not export"
    fed = {series["series"].split("{", 1)[0] for case in load(RULE_TESTS)["tests"] for series in case["input_series"]}
    assert fed <= exported, f"the unit tests feed {sorted(fed - exported)}, which Lifeboat does not export"


def test_every_alert_has_a_severity_and_says_what_to_do_in_the_readme() -> None:
    readme = DEPLOY_README.read_text(encoding="utf-8")
    section = re.search(r"^## Alerts.*?(?=^## )", readme, flags=re.MULTILINE | re.DOTALL)
    assert section, "deploy/README.md has no '## Alerts' section (the rules' runbook annotations point at #alerts)"
    for alert, rule in rules().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), alert
        assert rule["annotations"]["summary"].strip(), alert
        assert f"deploy/README.md#alerts ({alert})" in rule["annotations"]["runbook"], alert
        assert f"`{alert}`" in section.group(0), f"deploy/README.md#alerts does not say what to do about {alert}"


def test_the_prometheusrule_carries_exactly_the_groups_of_the_plain_rules_file() -> None:
    prometheus_rule = load(MONITORING / "prometheusrule.yaml")
    expected = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "lifeboat", "namespace": "lifeboat", "labels": {"app.kubernetes.io/name": "lifeboat"}},
        "spec": {"groups": load(RULES)["groups"]},
    }
    assert prometheus_rule["spec"]["groups"] == expected["spec"]["groups"], (
        "deploy/kubernetes/monitoring/prometheusrule.yaml differs from deploy/prometheus/lifeboat-rules.yaml: "
        "copy the groups of the latter into spec.groups"
    )
    assert prometheus_rule == expected


def test_the_servicemonitor_scrapes_the_metrics_service_as_job_lifeboat() -> None:
    monitor = load(MONITORING / "servicemonitor.yaml")
    service = load(ROOT / "deploy" / "kubernetes" / "base" / "service.yaml")
    spec = monitor["spec"]
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert [(endpoint["port"], endpoint["path"]) for endpoint in spec["endpoints"]] == [("http-metrics", "/metrics")]
    assert "http-metrics" in ports
    # The operator names the job after the Service (no jobLabel set): what LifeboatDown looks for.
    assert "jobLabel" not in spec
    assert f'up{{job="{service["metadata"]["name"]}"}}' in rules()["LifeboatDown"]["expr"]
