"""The RTO forecast warns the team once, by mail, when next month's forecast crosses the drill's
objective while the drills still meet it; `lifeboat status` shows the forecast and the open incident."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from forecast_history import seed_growing_source
from policy_builder import PolicyBuilder
from report_samples import source_run

from drills.model import DrillRun, Objectives
from lifeboat.cli import cli
from lifeboat.operations import open_operations
from lifeboat.state.records import utc_now
from policies.loader import load_policy

pytestmark = pytest.mark.integration


def lake_run(rto: float) -> DrillRun:
    """A drill run of nightly over lake that restored in ``rto`` seconds (objective 10m)."""
    now = utc_now()
    return DrillRun("nightly", f"nightly-{rto}", now, Objectives(600, 93600), now, [source_run("lake", rto=rto)])


def forecast_policy(tmp_path: Path, smtp_inbox: Any) -> Path:
    builder = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    builder.source("lake", "s3", endpoint_url="http://127.0.0.1:9", buckets=["lake"])
    builder.scratch("local", local={"s3": {"endpoint_url": "http://127.0.0.1:9"}})
    builder.drill("nightly", sources=["lake"], objectives={"rto": "10m", "rpo": "26h"})
    builder.email("team", port=smtp_inbox.port, to=["ml-platform@example.org"], on=["drill"])
    return builder.write(tmp_path / "lifeboat.yaml")


def test_the_forecast_crossing_the_objective_is_mailed_once_before_any_drill_fails_it(
    tmp_path: Path, smtp_inbox: Any
) -> None:
    config = forecast_policy(tmp_path, smtp_inbox)

    with open_operations(load_policy(config)) as operations:
        seed_growing_source(operations.history, now=utc_now())
        for _ in range(3):  # three drills in a row, each within the objective today (280 s of 600 s)
            operations.warn_of_rto_forecast("nightly", lake_run(280.0), run_id=1)

    [mail] = smtp_inbox.wait_for(1)
    assert mail["Subject"].startswith("[lifeboat] nightly: RTO forecast 14m")
    assert "will exceed the objective 10m00s around" in mail["Subject"]
    body = mail.get_body(("plain",)).get_content()
    assert "least-squares" in body and "- lake: 14m" in body
    status = json.loads(CliRunner().invoke(cli, ["--config", str(config), "status", "--json"]).stdout)
    [incident] = status["incidents"]
    assert (incident["event"], incident["name"], incident["occurrences"]) == ("rto-forecast", "nightly", 3)
    [drill] = status["drills"]
    assert drill["rto_forecast"]["rto_seconds"] == pytest.approx(880, rel=0.01)
    assert status["evidence"]["on"] is False and "off" in status["evidence"]["why"]
    text = CliRunner().invoke(cli, ["--config", str(config), "status"]).output
    assert "RTO forecast nightly: 14m" in text and "crosses the objective around" in text
    assert "evidence: off: no evidence.signing_key" in text
    assert len(smtp_inbox.messages) == 1  # once per incident, never again while it stays open


def test_a_drill_already_over_its_objective_gets_no_forecast_warning(tmp_path: Path, smtp_inbox: Any) -> None:
    config = forecast_policy(tmp_path, smtp_inbox)

    with open_operations(load_policy(config)) as operations:
        seed_growing_source(operations.history, now=utc_now())
        operations.warn_of_rto_forecast("nightly", lake_run(700.0), run_id=1)  # the drill's own failure tells

        assert operations.history.open_incidents() == []
    assert smtp_inbox.messages == []
