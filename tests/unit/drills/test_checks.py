"""Judging drill checks and the command check's environment (drills/checks.py, backup/checks.py)."""

from __future__ import annotations

import os
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.checks import CheckCannotRun, judge
from backup.sources.base import Observation
from backup.sources.clickhouse.client import Endpoint
from backup.sources.clickhouse.targets import ClickHouseTarget
from backup.sources.etcd.targets import EtcdEndpointTarget
from backup.sources.s3.targets import BucketTarget
from drills.checks import RestoredCopy, command_environment, run_command_check
from drills.scratch.local.environment import run_here
from drills.steps import StepFailed, StepOutcome, StepUnverified
from policies.loader import parse_policy
from policies.model import ClickHouseCheck, CommandCheck, Policy

POLICY = """
repository:
  url: s3://backups/prod
  s3: {endpoint_url: "http://backup-minio:9000", access_key_id: repo-key, secret_access_key: repo-secret}
sources:
  features: {kind: clickhouse, host: ch-1, databases: [features], password: source-password}
  models:
    {kind: s3, endpoint_url: "http://minio:9000", access_key_id: src-key, secret_access_key: shared-secret, buckets: [m]}
  k8s-etcd: {kind: etcd, endpoints: ["http://etcd:2379"], user: root, password: etcd-password}
scratch:
  kind: local
  local:
    clickhouse: {host: ch-scratch, password: scratch-password}
    s3: {endpoint_url: "http://scratch-minio:9000", access_key_id: scratch-key, secret_access_key: shared-secret}
drills:
  nightly: {sources: [features, models, k8s-etcd], objectives: {rto: 30m, rpo: 1d}}
"""


def policy() -> Policy:
    return parse_policy(textwrap.dedent(POLICY), label="lifeboat.yaml", env={})


def copies() -> list[RestoredCopy]:
    endpoint = Endpoint("ch-scratch", 9000, 8123, "default", "scratch-password", database="lifeboat_drill_x")
    bucket = BucketTarget("http://scratch-minio:9000", "lifeboat-drill-x", credentials=("scratch-key", "shared-secret"))
    return [
        RestoredCopy("features", "clickhouse", "features-20260101T000000Z-abcd", ClickHouseTarget(endpoint)),
        RestoredCopy("models", "s3", "models-20260101T000000Z-abcd", bucket),
        RestoredCopy("k8s-etcd", "etcd", "k8s-etcd-20260101T000000Z-abcd", EtcdEndpointTarget("http://127.0.0.1:5"), "/d"),
    ]


def check(expect: Any, tolerance: float | None = None) -> ClickHouseCheck:
    return ClickHouseCheck(name="c", sql="SELECT 1", expect=expect, tolerance=tolerance)


def test_expectations_say_what_was_expected_and_what_was_seen() -> None:
    assert judge(check({"min": 1}), Observation(0, 1, "0"), None).message == "expected >= 1; seen 0"
    assert not judge(check({"min": 1}), Observation(0, 1, "0"), None).passed
    assert judge(check({"equals": 0}), Observation(0, 1, "0"), None).passed  # 0 is a value, not "nothing"
    assert not judge(check({"rows_min": 3}), Observation([[1], [2]], 2, "2 rows"), None).passed
    captured = Observation(1000, 1, "1000")
    assert not judge(check("same_as_source"), Observation(1009, 1, "1009"), captured).passed
    within = judge(check("same_as_source", tolerance=0.01), Observation(1009, 1, "1009"), captured)
    assert within.passed and within.message == "expected 1000 as at backup time (within 1.00%); seen 1009"


def test_what_cannot_be_judged_is_an_error_not_a_verdict() -> None:
    with pytest.raises(CheckCannotRun, match="min/max compare a number"):
        judge(check({"min": 1}), Observation("abc", 1, "'abc'"), None)
    with pytest.raises(CheckCannotRun, match="no result captured at backup time"):
        judge(check("same_as_source"), Observation(1, 1, "1"), None)


def test_a_command_sees_only_lifeboat_variables_of_the_copies_and_never_a_secret(tmp_path: Path) -> None:
    env, withheld = command_environment(policy(), "nightly", "20260101t000000z-abcd", copies())
    assert set(env) - {"PATH"} == {name for name in env if name.startswith("LIFEBOAT_")}
    assert env["LIFEBOAT_FEATURES_CLICKHOUSE_DATABASE"] == "lifeboat_drill_x"
    assert env["LIFEBOAT_FEATURES_CLICKHOUSE_PASSWORD"] == "scratch-password"  # the scratch copy's own
    assert env["LIFEBOAT_MODELS_S3_ACCESS_KEY_ID"] == "scratch-key"
    assert env["LIFEBOAT_K8S_ETCD_ETCD_ENDPOINTS"] == "http://127.0.0.1:5" and env["LIFEBOAT_K8S_ETCD_ETCD_DATA_DIR"] == "/d"
    # The scratch S3 secret is also a source's: withheld, and said so.
    assert withheld == ["LIFEBOAT_MODELS_S3_SECRET_ACCESS_KEY"]
    secrets = {"repo-key", "repo-secret", "source-password", "src-key", "shared-secret", "etcd-password"}
    assert not secrets & set(env.values())

    dump = tmp_path / "env.txt"
    script = "import sys; open(sys.argv[1], 'wb').write(open('/proc/self/environ', 'rb').read())"
    outcome = StepOutcome()
    command = CommandCheck(name="env", command=[sys.executable, "-c", script, str(dump)])
    run_command_check(command, env, withheld, outcome, run_here)
    seen = dict(item.split("=", 1) for item in dump.read_text().split("\0") if item)
    assert seen == {**env, "PATH": os.environ["PATH"]}  # exactly that: nothing else of this process's environment


def test_a_command_exit_code_is_its_verdict_and_its_output_is_kept(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    failing = CommandCheck(name="f", command=[sys.executable, "-c", "print('no model'); raise SystemExit(2)"])
    with pytest.raises(StepFailed, match="exited with code 2") as caught:
        run_command_check(failing, env, [], StepOutcome(), run_here)
    assert caught.value.details["output"] == ["no model"]
    with pytest.raises(StepUnverified, match="could not run"):
        run_command_check(CommandCheck(name="m", command=[str(tmp_path / "missing")]), env, [], StepOutcome(), run_here)
    slow = CommandCheck(
        name="s", command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=timedelta(seconds=1)
    )
    with pytest.raises(StepUnverified, match="timed out after 1s"):
        run_command_check(slow, env, [], StepOutcome(), run_here)
