"""The Prometheus text of /metrics, read from the state DB, and the HTTP endpoints."""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backup.execute import free_port
from drills.model import Status
from lifeboat import __version__
from lifeboat.metrics import ListenError, MetricsServer, metrics_registry, render_metrics
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus
from policies.loader import parse_policy
from policies.model import Policy

POLICY = """
sources:
  k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"]}
  models: {kind: s3, buckets: [models]}
  features: {kind: clickhouse, host: ch, databases: [features]}
scratch:
  local:
    clickhouse: {host: ch-scratch}
    s3: {endpoint_url: "http://scratch-minio:9000"}
drills:
  nightly: {sources: [k8s-etcd, models], objectives: {rto: 30m, rpo: 26h}}
  weekly: {sources: [features], objectives: {rto: 2h, rpo: 8d}}
"""


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, label="test.yaml", env={})


@pytest.fixture
def history(tmp_path: Path) -> Iterator[RunHistory]:
    with RunHistory.open(tmp_path / "state.db") as opened:
        yield opened


def record(history: RunHistory, kind: RunKind, name: str, status: RunStatus | Status, **figures: Any) -> int:
    run_id = history.start_run(kind, name, origin="service")
    history.finish_run(run_id, status, figures=figures)
    return run_id


def scrape(history: RunHistory, policy: Policy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render_metrics(metrics_registry(history, lambda: policy)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_backup_figures_come_from_the_newest_runs(history: RunHistory, policy: Policy) -> None:
    record(history, RunKind.BACKUP, "k8s-etcd", RunStatus.OK, seconds=3.5, bytes_read=1000, bytes_stored=100)
    record(history, RunKind.BACKUP, "k8s-etcd", RunStatus.SUSPICIOUS, seconds=4.0, bytes_read=900, bytes_stored=50)
    record(history, RunKind.BACKUP, "k8s-etcd", RunStatus.FAILED, seconds=0.2)
    history.set_inventory({"k8s-etcd": (7, 1), "models": (3, 0)}, repository="r")
    [good] = history.runs(RunKind.BACKUP, "k8s-etcd", limit=3)[2:]
    [failed] = history.runs(RunKind.BACKUP, "k8s-etcd", limit=1)
    metrics = scrape(history, policy)

    etcd = (("source", "k8s-etcd"),)
    assert good.finished is not None and failed.finished is not None
    assert metrics[("lifeboat_last_success_timestamp_seconds", etcd)] == pytest.approx(good.finished.timestamp())
    assert metrics[("lifeboat_last_failure_timestamp_seconds", etcd)] == pytest.approx(failed.finished.timestamp())
    # duration and bytes: the newest backup that completed (the suspicious one), not the failed one
    assert metrics[("lifeboat_backup_duration_seconds", etcd)] == 4.0
    assert metrics[("lifeboat_backup_bytes", (("kind", "read"), *etcd))] == 900
    assert metrics[("lifeboat_backup_bytes", (("kind", "stored"), *etcd))] == 50
    assert metrics[("lifeboat_snapshots", etcd)] == 7 and metrics[("lifeboat_suspicious_snapshots", etcd)] == 1
    # a source never backed up: last success 0 (so "too old" alerts fire), no duration yet
    assert metrics[("lifeboat_last_success_timestamp_seconds", (("source", "features"),))] == 0
    assert ("lifeboat_backup_duration_seconds", (("source", "features"),)) not in metrics
    assert ("lifeboat_snapshots", (("source", "features"),)) not in metrics


def test_drill_verdicts_are_1_pass_0_fail_minus_1_error_per_source(history: RunHistory, policy: Policy) -> None:
    record(history, RunKind.DRILL, "nightly", Status.PASS, sources=[{"source": "k8s-etcd", "verdict": "PASS"}])
    record(
        history,
        RunKind.DRILL,
        "nightly",
        Status.FAIL,
        sources=[
            {"source": "k8s-etcd", "verdict": "PASS", "rto_seconds": 12.5},
            {"source": "models", "verdict": "FAIL", "rto_seconds": None},
        ],
    )
    record(history, RunKind.DRILL, "weekly", Status.ERROR, sources=[])  # stopped before reaching its source
    record(history, RunKind.DRILL, "weekly", RunStatus.INTERRUPTED)  # no verdict: not counted
    metrics = scrape(history, policy)

    def verdict(drill: str, source: str) -> float:
        return metrics[("lifeboat_drill_verdict", (("drill", drill), ("source", source)))]

    def rto(drill: str, source: str) -> float:
        return metrics[("lifeboat_drill_rto_seconds", (("drill", drill), ("source", source)))]

    assert (verdict("nightly", "k8s-etcd"), verdict("nightly", "models"), verdict("weekly", "features")) == (1, 0, -1)
    assert rto("nightly", "k8s-etcd") == 12.5
    assert math.isnan(rto("nightly", "models")) and math.isnan(rto("weekly", "features"))


def test_check_and_prune_figures(history: RunHistory, policy: Policy) -> None:
    assert ("lifeboat_check_ok", ()) not in scrape(history, policy)
    record(history, RunKind.CHECK, "repository", RunStatus.OK)
    record(history, RunKind.CHECK, "repository", RunStatus.FAILED)
    record(history, RunKind.PRUNE, "repository", RunStatus.OK)
    metrics = scrape(history, policy)
    assert metrics[("lifeboat_check_ok", ())] == 0
    assert metrics[("lifeboat_last_check_timestamp_seconds", ())] > 0
    assert metrics[("lifeboat_last_prune_success_timestamp_seconds", ())] > 0


def test_figures_survive_a_restart_and_stay_out_of_the_global_registry(tmp_path: Path, policy: Policy) -> None:
    with RunHistory.open(tmp_path / "state.db") as history:
        record(history, RunKind.BACKUP, "models", RunStatus.OK, seconds=2.0, bytes_read=5, bytes_stored=5)
        before = render_metrics(metrics_registry(history, lambda: policy))
    with RunHistory.open(tmp_path / "state.db") as history:
        after = render_metrics(metrics_registry(history, lambda: policy))
    assert after == before and b'lifeboat_backup_duration_seconds{source="models"} 2.0' in after
    assert b"lifeboat_" not in generate_latest(REGISTRY)


def test_the_http_endpoints_answer_healthz_and_metrics(history: RunHistory, policy: Policy) -> None:
    state = {"healthy": True}
    port = free_port()
    server = MetricsServer(
        f"127.0.0.1:{port}", metrics_registry(history, lambda: policy), lambda: (state["healthy"], {"status": "x"})
    )
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            assert b"lifeboat_last_success_timestamp_seconds" in response.read()
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            assert response.status == 200 and json.loads(response.read()) == {"status": "x"}
        state["healthy"] = False
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=5)
        assert unhealthy.value.code == 503
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            MetricsServer(f"127.0.0.1:{port}", metrics_registry(history, lambda: policy), lambda: (True, {})).start()
    finally:
        server.stop()


def test_run_counters_histogram_and_build_info(history: RunHistory, policy: Policy) -> None:
    for status in (RunStatus.OK, RunStatus.OK, RunStatus.FAILED, RunStatus.SUSPICIOUS):
        record(history, RunKind.BACKUP, "k8s-etcd", status)
    record(history, RunKind.DRILL, "nightly", Status.FAIL, sources=[{"source": "models", "rpo_seconds": 7200.0}])
    record(history, RunKind.CHECK, "repository", RunStatus.FAILED)
    metrics = scrape(history, policy)

    assert metrics[("lifeboat_backup_runs_total", (("source", "k8s-etcd"), ("status", "ok")))] == 2
    assert metrics[("lifeboat_backup_runs_total", (("source", "k8s-etcd"), ("status", "failed")))] == 1
    assert metrics[("lifeboat_backup_runs_total", (("source", "models"), ("status", "failed")))] == 0
    assert metrics[("lifeboat_drill_runs_total", (("drill", "nightly"), ("verdict", "FAIL")))] == 1
    assert metrics[("lifeboat_check_runs_total", (("status", "failed"),))] == 1
    assert metrics[("lifeboat_prune_runs_total", (("status", "ok"),))] == 0
    assert metrics[("lifeboat_job_duration_seconds_count", (("kind", "backup"),))] == 4
    assert metrics[("lifeboat_job_duration_seconds_bucket", (("kind", "backup"), ("le", "+Inf")))] == 4
    assert metrics[("lifeboat_build_info", (("version", __version__),))] == 1
    assert metrics[("lifeboat_last_backup_suspicious", (("source", "k8s-etcd"),))] == 1
    assert metrics[("lifeboat_drill_rpo_seconds", (("drill", "nightly"), ("source", "models")))] == 7200.0
    assert metrics[("lifeboat_drill_rto_objective_seconds", (("drill", "nightly"), ("source", "models")))] == 1800


def test_the_endpoint_speaks_http_1_1_and_answers_head(history: RunHistory, policy: Policy) -> None:
    server = MetricsServer(f"127.0.0.1:{free_port()}", metrics_registry(history, lambda: policy), lambda: (True, {}))
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.status == 200 and head.version == 11 and head.read() == b""
        length = int(head.headers["Content-Length"])
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/metrics")
        got = connection.getresponse()
        text = got.read().decode()
        assert got.status == 200 and len(text.encode()) == length
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"lifeboat_backup_runs", "lifeboat_job_duration_seconds", "lifeboat_build_info"} <= names
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        server.stop()
