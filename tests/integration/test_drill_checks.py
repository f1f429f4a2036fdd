"""Drill checks (README "Drill checks") end to end against real etcd, ClickHouse and S3 servers: each
kind PASSes on a good copy and FAILs on a copy made wrong the way it guards against; a check that
cannot run is ERROR; ``same_as_source`` compares with what the snapshot captured, not today's
source; a command check sees only the documented LIFEBOAT_* variables, never a secret."""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.repository import open_repository
from drills.runner import new_run_id, run_drill
from drills.scratch import make_scratch
from drills.scratch.base import Slot
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration

SMOKE = textwrap.dedent(
    """\
    import json, os, sys, urllib.request
    with open("/proc/self/environ", "rb") as given:  # as given at exec, before Python's own locale coercion
        environ = dict(item.decode().split("=", 1) for item in given.read().split(b"\\0") if item)
    with open(sys.argv[1], "w") as out:
        json.dump(environ, out)
    port, db = os.environ["LIFEBOAT_FEATURES_CLICKHOUSE_HTTP_PORT"], os.environ["LIFEBOAT_FEATURES_CLICKHOUSE_DATABASE"]
    query = f"SELECT count() FROM {db}.events".encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=query), timeout=30) as answer:
        rows = int(answer.read())
    print(f"{rows} feature rows in the copy")
    sys.exit(0 if rows > 0 else 1)
    """
)


@dataclass
class Setup:
    root: Path
    config: Path
    policy: PolicyBuilder
    database: str
    bucket: str
    namespace: str  # the Kubernetes namespace of this test's etcd keys
    env_file: Path


def etcd_put(endpoint: str, key: str, value: bytes = b"x") -> None:
    body = json.dumps({"key": _b64(key.encode()), "value": _b64(value)}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST"), timeout=10).read()


def etcd_delete(endpoint: str, key: str, *, prefix: bool = False) -> None:
    document = {"key": _b64(key.encode())}
    if prefix:
        document["range_end"] = _b64(key[:-1].encode() + bytes([ord(key[-1]) + 1]))
    body = json.dumps(document).encode()
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/deleterange", data=body, method="POST"), timeout=10)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def clickhouse(server: Any, sql: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(server.http_url, data=sql.encode()), timeout=60) as answer:
        return str(answer.read().decode())


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


@pytest.fixture
def setup(
    tmp_path: Path, etcd_server: Any, clickhouse_server: Any, clickhouse_database: str, s3_server: Any, s3_bucket: str
) -> Setup:
    db, ns = clickhouse_database, f"ml-{uuid.uuid4().hex[:8]}"
    for i in range(12):
        etcd_put(etcd_server.endpoint, f"/registry/pods/{ns}/pod-{i}")
    etcd_put(etcd_server.endpoint, f"/registry/deployments/{ns}/trainer")
    clickhouse(
        clickhouse_server, f"CREATE TABLE {db}.events (day Date, user UInt64, tag String) ENGINE = MergeTree ORDER BY user"
    )
    clickhouse(
        clickhouse_server,
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 30, number % 700, toString(number % 13) "
        "FROM system.numbers LIMIT 5000",
    )
    s3 = s3_server.client()
    for i in range(8):
        s3.put_object(Bucket=s3_bucket, Key=f"models/resnet/part-{i}.bin", Body=os.urandom(1000 + i))
    s3.put_object(Bucket=s3_bucket, Key="models/resnet/weights.bin", Body=os.urandom(5000))

    keys = {"access_key_id": s3_server.access_key_id, "secret_access_key": s3_server.secret_access_key}
    ports = {"port": clickhouse_server.tcp_port, "http_port": clickhouse_server.http_port}
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source(
        "k8s-etcd",
        "etcd",
        endpoints=[etcd_server.endpoint],
        checks=[
            {"name": "pods", "prefix": f"/registry/pods/{ns}/", "expect": {"min": 12}},
            {"name": "pods-as-at-backup", "prefix": f"/registry/pods/{ns}/", "expect": "same_as_source"},
            {"name": "trainer", "kubernetes": {"resource": "deployments", "namespace": ns, "name": "trainer"}},
        ],
    )
    policy.source(
        "features",
        "clickhouse",
        host="127.0.0.1",
        **ports,
        databases=[db],
        checks=[
            {"name": "has-rows", "sql": f"SELECT count() FROM {db}.events", "expect": {"min": 1}, "at_backup": True},
            {"name": "same-rows", "sql": f"SELECT count() FROM {db}.events", "expect": "same_as_source"},
            {"name": "tags", "sql": "SELECT tag, count() FROM events GROUP BY tag ORDER BY tag", "expect": {"rows_min": 13}},
        ],
    )
    policy.source(
        "models",
        "s3",
        endpoint_url=s3_server.endpoint_url,
        **keys,
        buckets=[s3_bucket],
        checks=[
            {"name": "weights", "object": f"{s3_bucket}/models/resnet/weights.bin", "expect": "same_as_source"},
            {"name": "parts", "prefix": f"{s3_bucket}/models/resnet/part-", "expect": {"min": 8, "min_bytes": 8000}},
        ],
    )
    policy.scratch(
        "local",
        local={
            "workdir": tmp_path / "scratch",
            "clickhouse": {"host": "127.0.0.1", **ports},
            "s3": {"endpoint_url": s3_server.endpoint_url, **keys},
        },
    )
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    env_file = tmp_path / "seen-env.json"
    policy.drill(
        "nightly",
        sources=["k8s-etcd", "features", "models"],
        objectives={"rto": "30m", "rpo": "1h"},
        checks=[{"name": "smoke", "command": [sys.executable, str(script), str(env_file)], "timeout": "2m"}],
    )
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    return Setup(tmp_path, config, policy, db, s3_bucket, ns, env_file)


def backup(setup: Setup, *, exit_code: int = 0) -> dict[str, Any]:
    result = lifeboat(setup.config, "backup", "run", "--json")
    assert result.exit_code == exit_code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def check_steps(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``check:<name>`` -> (verdict, message), of every source and of the drill."""
    steps = [step for source in report["sources"] for step in source["steps"]] + report["steps"]
    return {step["name"]: (step["verdict"], step["message"]) for step in steps if step["name"].startswith("check:")}


def test_every_check_passes_on_a_good_copy_even_after_the_source_changed(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(setup)
    with open_repository(load_policy(setup.config).repository) as repository:
        captured = repository.find_snapshot("features").meta["checks"]
    assert captured["same-rows"]["value"] == 5000  # the query's result at backup time, in the manifest
    # Today's source is not what the snapshot holds: same_as_source compares with the snapshot.
    clickhouse(clickhouse_server, f"INSERT INTO {setup.database}.events SELECT today(), 1, 'x' FROM system.numbers LIMIT 7")
    etcd_put(etcd_server.endpoint, f"/registry/pods/{setup.namespace}/pod-new")
    s3_server.client().put_object(Bucket=setup.bucket, Key="models/resnet/weights.bin", Body=b"retrained")
    # Secrets of Lifeboat's own environment must never reach a command check.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "parent-secret")
    monkeypatch.setenv("LB_REPOSITORY_KEY", "parent-secret")

    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--report-dir", str(setup.root / "reports"))
    report = json.loads(result.stdout)
    checks = check_steps(report)
    assert {name: verdict for name, (verdict, _) in checks.items()} == {
        "check:pods": "PASS",
        "check:pods-as-at-backup": "PASS",
        "check:trainer": "PASS",
        "check:has-rows": "PASS",
        "check:same-rows": "PASS",
        "check:tags": "PASS",
        "check:weights": "PASS",
        "check:parts": "PASS",
        "check:smoke": "PASS",
    }, json.dumps(report["steps"])[-3000:]
    assert result.exit_code == 0 and report["verdict"] == "PASS", report
    assert checks["check:same-rows"][1] == "expected 5000 as at backup time; seen 5000"
    names = [step["name"] for step in report["sources"][1]["steps"]]
    assert names[5:9] == ["verify", "check:has-rows", "check:same-rows", "check:tags"]
    assert names[-1] == "teardown"

    seen = json.loads(setup.env_file.read_text())
    assert set(seen) - {"PATH"} == {name for name in seen if name.startswith("LIFEBOAT_")}
    assert "parent-secret" not in seen.values() and s3_server.secret_access_key not in seen.values()
    assert seen["LIFEBOAT_FEATURES_CLICKHOUSE_DATABASE"].startswith("lifeboat_drill_")
    assert seen["LIFEBOAT_MODELS_S3_BUCKET"].startswith("lifeboat-drill-")
    assert seen["LIFEBOAT_K8S_ETCD_ETCD_ENDPOINTS"].startswith("http://127.0.0.1:")
    assert seen["LIFEBOAT_K8S_ETCD_ETCD_ENDPOINTS"] != etcd_server.endpoint
    # The scratch S3 key equals the source's here: withheld, and the step says so.
    smoke = next(step for step in report["steps"] if step["name"] == "check:smoke")
    assert "LIFEBOAT_MODELS_S3_SECRET_ACCESS_KEY" in smoke["details"]["withheld"]
    assert any("feature rows in the copy" in line for line in smoke["details"]["output"])

    files = report["report_files"]
    junit = ET.parse(files["junit"]).getroot()
    assert {"check:same-rows", "check:smoke"} <= {case.get("name") for case in junit.iter("testcase")}
    for kind in ("html", "text"):
        assert "check:same-rows" in Path(files[kind]).read_text()


def test_checks_fail_on_a_copy_of_an_emptied_source_and_at_backup_flags_the_snapshot(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any
) -> None:
    clickhouse(clickhouse_server, f"DROP TABLE {setup.database}.events")  # yesterday's ETL emptied the table
    clickhouse(clickhouse_server, f"CREATE TABLE {setup.database}.events (day Date, user UInt64, tag String) ENGINE = Log")
    etcd_delete(etcd_server.endpoint, f"/registry/pods/{setup.namespace}/", prefix=True)
    etcd_delete(etcd_server.endpoint, f"/registry/deployments/{setup.namespace}/trainer")
    s3_server.client().delete_object(Bucket=setup.bucket, Key="models/resnet/part-0.bin")

    [features] = [item for item in backup(setup, exit_code=4)["snapshots"] if item["source"] == "features"]
    assert features["status"] == "suspicious"
    assert any("check has-rows failed on the source at backup time" in why for why in features["anomalies"])
    # Without the health check at backup time, the emptied table becomes a good snapshot: the drill must catch it.
    checks = setup.policy.document["sources"]["features"]["checks"]
    checks[0] = {"name": "has-rows", "sql": f"SELECT count() FROM {setup.database}.events", "expect": {"min": 1}}
    setup.policy.write(setup.config)
    [features] = [item for item in backup(setup)["snapshots"] if item["source"] == "features"]
    assert features["status"] == "good"

    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--only-checks", "--no-email")
    report = json.loads(result.stdout)
    checks = check_steps(report)
    verdicts = {name: verdict for name, (verdict, _) in checks.items()}
    for failing in ("check:pods", "check:trainer", "check:has-rows", "check:tags", "check:parts", "check:smoke"):
        assert verdicts[failing] == "FAIL", checks
    for passing in ("check:pods-as-at-backup", "check:same-rows", "check:weights"):  # faithful to the snapshot
        assert verdicts[passing] == "PASS", checks
    assert checks["check:has-rows"][1] == "expected >= 1; seen 0"
    assert checks["check:parts"][1].startswith("expected at least 8000 bytes, >= 8; seen 7 object(s)")
    assert result.exit_code == 1 and report["verdict"] == "FAIL"
    # --only-checks: restore, verify and the checks; no RPO, drift or faults.
    names = {step["name"] for source in report["sources"] for step in source["steps"]}
    assert not names & {"rpo", "drift"} and not any(name.startswith("fault:") for name in names)


class TamperingScratch:
    """A scratch environment whose copies are changed right after the restore (before verify and
    the checks): a copy wrong the way ``same_as_source`` guards against."""

    def __init__(self, inner: Any, tamper: dict[str, Any]) -> None:
        self.inner = inner
        self.run_id = inner.run_id
        self.command_view = inner.command_view
        self.run_command = inner.run_command
        self.tamper = tamper

    def slot(self, source: str, kind: str, header: Any, *, killable: bool = False) -> Slot:
        slot = self.inner.slot(source, kind, header, killable=killable)
        original = slot.after_restore

        def after_restore() -> None:
            original()
            self.tamper[kind](slot)

        slot.after_restore = after_restore  # type: ignore[method-assign]
        return slot  # type: ignore[no-any-return]

    def teardown(self) -> list[str]:
        return list(self.inner.teardown())


def test_same_as_source_fails_on_a_copy_that_differs_from_what_the_snapshot_captured(
    setup: Setup, clickhouse_server: Any, s3_server: Any
) -> None:
    backup(setup)
    client = s3_server.client()

    def clickhouse_tamper(slot: Any) -> None:
        clickhouse(clickhouse_server, f"INSERT INTO {slot.database}.events VALUES (today(), 1, 'x')")

    def etcd_tamper(slot: Any) -> None:
        etcd_put(slot.verify_target().endpoint, f"/registry/pods/{setup.namespace}/intruder")

    def s3_tamper(slot: Any) -> None:
        client.put_object(Bucket=slot.bucket, Key="models/resnet/weights.bin", Body=b"not the weights")

    policy = load_policy(setup.config)
    tamper = {"clickhouse": clickhouse_tamper, "etcd": etcd_tamper, "s3": s3_tamper}
    with open_repository(policy.repository) as repository:
        scratch = TamperingScratch(make_scratch(policy.scratch, new_run_id(datetime.now(UTC)), drill="nightly"), tamper)
        run = run_drill(policy, "nightly", repository=repository, scratch=scratch)  # type: ignore[arg-type]
    checks = check_steps(run.to_dict())
    assert checks["check:same-rows"] == ("FAIL", "expected 5000 as at backup time; seen 5001")
    pods = f"/registry/pods/{setup.namespace}/"
    expected = f"expected 12 key(s) under {pods} as at backup time; seen 13 key(s) under {pods}"
    assert checks["check:pods-as-at-backup"] == ("FAIL", expected)
    assert checks["check:weights"][0] == "FAIL"
    assert checks["check:pods"][0] == "PASS"  # {min: 12} still holds


def test_a_check_that_cannot_run_is_an_error_never_a_pass_or_a_fail(setup: Setup, clickhouse_server: Any) -> None:
    db = setup.database
    policy = setup.policy
    policy.set(
        "sources.features.checks",
        [
            {"name": "bad-sql", "sql": "SELEKT nothing", "expect": {"min": 1}},
            {"name": "writes", "sql": f"CREATE TABLE {db}.sneaky (a UInt8) ENGINE = Memory", "expect": {"rows_min": 0}},
            {"name": "not-a-number", "sql": f"SELECT tag FROM {db}.events LIMIT 1", "expect": {"min": 1}},
        ],
    )
    policy.set(
        "drills.nightly.checks",
        [
            {"name": "missing-program", "command": ["/nonexistent/smoke-test"]},
            {"name": "too-slow", "command": [sys.executable, "-c", "import time; time.sleep(60)"], "timeout": "1s"},
        ],
    )
    policy.set("drills.nightly.sources", ["features"])
    config = policy.write(setup.root / "lifeboat.yaml")
    result = lifeboat(config, "backup", "run", "--json")
    assert result.exit_code == 0, result.output
    result = lifeboat(config, "drill", "run", "nightly", "--json", "--only-checks", "--no-email")
    report = json.loads(result.stdout)
    checks = check_steps(report)
    assert {name: verdict for name, (verdict, _) in checks.items()} == {
        "check:bad-sql": "ERROR",
        "check:writes": "ERROR",
        "check:not-a-number": "ERROR",
        "check:missing-program": "ERROR",
        "check:too-slow": "ERROR",
    }, checks
    assert "could not run" in checks["check:bad-sql"][1]
    assert "timed out after 1s" in checks["check:too-slow"][1]
    assert result.exit_code == 3 and report["verdict"] == "ERROR"
    tables = clickhouse(
        clickhouse_server, f"SELECT name FROM system.tables WHERE database LIKE 'lifeboat_drill_%' OR database = '{db}'"
    )
    assert "sneaky" not in tables  # readonly = 1: a check never writes
