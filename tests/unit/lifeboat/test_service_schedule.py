"""Schedules as crontab means them, the jobs a policy makes, and ``lifeboat status`` without servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from policy_builder import PolicyBuilder

from lifeboat.cli import cli
from lifeboat.service import job_specs, next_fire_times
from lifeboat.state import RunHistory, RunKind, RunStatus
from policies.loader import parse_policy

SATURDAY = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # 2026-11-28 is a Saturday


def fires(expression: str, count: int = 3) -> list[str]:
    return [moment.strftime("%a %Y-%m-%d %H:%M") for moment in next_fire_times(expression, now=SATURDAY, count=count)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 4 * * 0", ["Sun 2026-11-29 04:00", "Sun 2026-12-06 04:00"]),  # crontab: 0 is Sunday
        ("0 4 * * 7", ["Sun 2026-11-29 04:00", "Sun 2026-12-06 04:00"]),  # and so is 7
        ("0 4 * * 1-5", ["Mon 2026-11-30 04:00", "Tue 2026-12-01 04:00"]),
        ("0 4 * * mon,fri", ["Mon 2026-11-30 04:00", "Fri 2026-12-04 04:00"]),
        ("0 4 * * */3", ["Sun 2026-11-29 04:00", "Wed 2026-12-02 04:00"]),  # 0, 3, 6: Sun, Wed, Sat
        ("30 */6 * * *", ["Sat 2026-11-28 12:30", "Sat 2026-11-28 18:30"]),
        ("@daily", ["Sun 2026-11-29 00:00", "Mon 2026-11-30 00:00"]),
    ],
)
def test_schedules_fire_when_crontab_would(expression: str, expected: list[str]) -> None:
    assert fires(expression, 2) == expected


def test_day_of_month_and_weekday_together_fire_on_either_as_in_crontab() -> None:
    # "the 1st of the month, and every Monday": crontab ORs the two day fields
    assert fires("0 0 1 * 1") == ["Mon 2026-11-30 00:00", "Tue 2026-12-01 00:00", "Mon 2026-12-07 00:00"]


def test_a_policy_makes_one_job_per_schedule() -> None:
    policy = parse_policy(
        """
        repository: {prune: {schedule: "30 5 * * *"}}
        sources:
          k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], schedule: "*/30 * * * *"}
          unscheduled: {kind: etcd, endpoints: ["http://127.0.0.1:2379"]}
        drills:
          nightly: {schedule: "0 4 * * *", sources: [k8s-etcd], objectives: {rto: 30m, rpo: 26h}}
        scratch: {janitor: {schedule: "15 * * * *"}}
        """,
        label="test.yaml",
        env={},
    )
    assert [(spec.id, spec.kind, spec.name, spec.schedule) for spec in job_specs(policy)] == [
        ("backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd", "*/30 * * * *"),
        ("prune", RunKind.PRUNE, "repository", "30 5 * * *"),
        ("drill:nightly", RunKind.DRILL, "nightly", "0 4 * * *"),
        ("janitor", RunKind.JANITOR, "scratch", "15 * * * *"),
    ]


def test_status_reports_history_and_next_runs_even_without_a_repository(tmp_path: Path) -> None:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db", check={"schedule": "0 6 * * 0"})
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:1"], schedule="*/30 * * * *")
    policy.drill("nightly", schedule="0 4 * * *", sources=["k8s-etcd"], objectives={"rto": "30m", "rpo": "26h"})
    config = policy.scratch(janitor={"schedule": "15 * * * *"}).write(tmp_path / "lifeboat.yaml")
    with RunHistory.open(tmp_path / "state.db") as history:
        failed = history.start_run(RunKind.BACKUP, "k8s-etcd", origin="cli")
        history.finish_run(failed, RunStatus.FAILED, error="etcd at http://127.0.0.1:1 refused the connection")
        drill = history.start_run(RunKind.DRILL, "nightly", origin="service")
        history.finish_run(drill, RunStatus.ERROR, figures={"rto_seconds": None})
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
