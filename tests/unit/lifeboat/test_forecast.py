"""The RTO forecast (lifeboat.forecast): a growing source's restore time next month, the day it
crosses the drill's objective, and the gauge on /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from forecast_history import CROSSING_AFTER, FORECAST_SECONDS, OBJECTIVE, seed_growing_source
from prometheus_client.parser import text_string_to_metric_families

from lifeboat.forecast import forecasts, least_squares
from lifeboat.metrics import metrics_registry, render_metrics
from lifeboat.state.history import RunHistory
from lifeboat.state.records import utc_now
from policies.loader import parse_policy
from policies.model import Policy

POLICY = f"""
sources:
  lake: {{kind: s3, buckets: [lake]}}
  quiet: {{kind: s3, buckets: [quiet]}}
scratch:
  local:
    s3: {{endpoint_url: "http://scratch-minio:9000"}}
drills:
  nightly: {{sources: [lake], objectives: {{rto: {OBJECTIVE}, rpo: 26h}}}}
  weekly: {{sources: [quiet], objectives: {{rto: 1h, rpo: 8d}}}}
"""
TOLERANCE = timedelta(days=1)  # the forecast's stated tolerance on a crossing date (it steps by the hour)


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, label="test.yaml", env={})


@pytest.fixture
def history(tmp_path: Path) -> Iterator[RunHistory]:
    with RunHistory.open(tmp_path / "state.db") as opened:
        yield opened


def test_a_growing_source_is_forecast_to_cross_its_objective_on_the_right_day(policy: Policy, history: RunHistory) -> None:
    now = utc_now()
    seed_growing_source(history, now=now)

    forecast = forecasts(policy, history, now=now)

    nightly = forecast["nightly"]
    assert nightly.seconds == pytest.approx(FORECAST_SECONDS, rel=0.01)
    assert nightly.over_objective
    assert nightly.crossing is not None and abs(nightly.crossing - (now + CROSSING_AFTER)) <= TOLERANCE
    assert forecast["weekly"].seconds is None and forecast["weekly"].crossing is None  # never drilled: no forecast
    assert "least-squares" in nightly.as_dict()["method"]


def test_the_forecast_is_a_gauge_per_drill_and_source(policy: Policy, history: RunHistory) -> None:
    seed_growing_source(history, now=utc_now())

    text = render_metrics(metrics_registry(history, lambda: policy)).decode()

    samples = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lifeboat_rto_forecast_seconds"
    }
    assert list(samples) == [(("drill", "nightly"), ("source", "lake"))]
    assert samples[(("drill", "nightly"), ("source", "lake"))] == pytest.approx(FORECAST_SECONDS, rel=0.01)


def test_least_squares_fits_a_line_and_a_single_point_is_flat() -> None:
    line = least_squares([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)])
    assert (line.intercept, line.slope) == pytest.approx((1.0, 2.0))
    assert least_squares([(5.0, 7.0)]).at(100.0) == 7.0
