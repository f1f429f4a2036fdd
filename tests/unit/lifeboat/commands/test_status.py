"""``lifeboat status`` without servers."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from policy_builder import PolicyBuilder

from drills.model import Status
from lifeboat.cli import cli
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus


def test_status_reports_history_and_next_runs_even_without_a_repository(tmp_path: Path) -> None:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db", check={"schedule": "0 6 * * 0"})
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:1"], schedule="*/30 * * * *")
    policy.drill("nightly", schedule="0 4 * * *", sources=["k8s-etcd"], objectives={"rto": "30m", "rpo": "26h"})
    config = policy.scratch(janitor={"schedule": "15 * * * *"}).write(tmp_path / "lifeboat.yaml")
    with RunHistory.open(tmp_path / "state.db") as history:
        failed = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="cli")
        history.finish_run(failed, RunStatus.FAILED, error="etcd at http://127.0.0.1:1 refused the connection")
        drill = history.start_run(RunKind.DRILL, "nightly", origin="service")
        history.finish_run(drill, Status.ERROR, figures={"rto_seconds": None})
        history.open_incident("backup-failure", "k8s-etcd", run_id=failed, message="refused")
        swept = history.start_run(RunKind.JANITOR, "scratch", origin="service")
        history.finish_run(swept, RunStatus.OK, figures={"removed": 2})

    result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [source] = document["sources"]
    assert source["snapshots"] is None and "no repository" in document["repository"]["error"]
    assert source["last_success"] is None and source["last_failure"]["error"].endswith("refused the connection")
    assert len(source["next_runs"]) == 3 and source["next_runs"][0].endswith((":00:00+00:00", ":30:00+00:00"))
    assert document["check"]["next_runs"][0].endswith("T06:00:00+00:00") and document["prune"]["next_runs"] == []
    assert document["drills"][0]["last_verdict"] == "ERROR" and document["service"] == {"running": False, "pid": None}
    assert document["janitor"]["last_success"]["figures"] == {"removed": 2}
    assert document["janitor"]["next_runs"][0].endswith(":15:00+00:00")
    assert [incident["event"] for incident in document["incidents"]] == ["backup-failure"]

    text = CliRunner().invoke(cli, ["--config", str(config), "status"], catch_exceptions=False)
    assert text.exit_code == 0 and "k8s-etcd" in text.stdout and "OPEN INCIDENT backup-failure k8s-etcd" in text.stdout
    assert "janitor: last success 20" in text.stdout
