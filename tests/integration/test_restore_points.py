"""Restore points across sources (issue 16) on real etcd, ClickHouse and S3 (moto) servers:
``backup run --restore-point``, ``restore-point list|show``, prune keeping a kept restore point's
members, and ``restore --restore-point``."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import init_repository
from policy_builder import PolicyBuilder

from lifeboat.cli import cli

pytestmark = pytest.mark.integration
MEMBERS = ["k8s-etcd", "features", "models"]
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}
OBJECTS = 12


@dataclass
class Platform:
    root: Path
    builder: PolicyBuilder
    config: Path
    database: str
    bucket: str

    def run(self, *args: str, config: Path | None = None) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config or self.config), *args], catch_exceptions=False)

    def document(self, *args: str, code: int, config: Path | None = None) -> dict[str, Any]:
        result = self.run(*args, "--json", config=config)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def variant(self, name: str, path: str, value: Any) -> Path:
        """The same policy with one value changed, written beside the original."""
        return self.builder.copy().set(path, value).write(self.root / f"{name}.yaml")


def seed_etcd(endpoint: str, bucket: str) -> None:
    """ConfigMap-like JSON values under /lifeboat-test/<bucket>/ that name the bucket."""
    import base64

    for i in range(20):
        key = base64.b64encode(f"/lifeboat-test/{bucket}/cm-{i}".encode()).decode()
        value = base64.b64encode(json.dumps({"bucket": bucket, "i": i}).encode()).decode()
        body = json.dumps({"key": key, "value": value}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST"), timeout=10).read()


@pytest.fixture
def platform(
    tmp_path: Path, etcd_server: Any, clickhouse_server: Any, clickhouse_database: str, s3_server: Any, s3_bucket: str
) -> Platform:
    from clickhouse_driver import Client

    seed_etcd(etcd_server.endpoint, s3_bucket)
    client = Client("127.0.0.1", port=clickhouse_server.tcp_port)
    client.execute(
        f"CREATE TABLE {clickhouse_database}.models (day Date, model_uri String) "
        "ENGINE = MergeTree PARTITION BY day ORDER BY model_uri"
    )
    client.execute(
        f"INSERT INTO {clickhouse_database}.models SELECT toDate('2026-11-01') + number % 3, "
        f"concat('s3://{s3_bucket}/models/m', toString(number), '.bin') FROM system.numbers LIMIT {OBJECTS}"
    )
    s3 = s3_server.client()
    for i in range(OBJECTS):
        s3.put_object(Bucket=s3_bucket, Key=f"models/m{i}.bin", Body=os.urandom(500 + i))
    ports = {"port": clickhouse_server.tcp_port, "http_port": clickhouse_server.http_port}
    builder = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    builder.source("k8s-etcd", "etcd", endpoints=[etcd_server.endpoint])
    builder.source("features", "clickhouse", host="127.0.0.1", **ports, databases=[clickhouse_database])
    builder.source("models", "s3", endpoint_url=s3_server.endpoint_url, **S3_KEYS, buckets=[s3_bucket])
    builder.set("restore_points", {"platform": {"sources": MEMBERS, "retention": {"keep_last": 1}}})
    scratch_s3 = {"endpoint_url": s3_server.endpoint_url, **S3_KEYS}
    builder.scratch(
        "local", local={"workdir": tmp_path / "scratch", "clickhouse": {"host": "127.0.0.1", **ports}, "s3": scratch_s3}
    )
    model_uris = {"source": "features", "sql": f"SELECT DISTINCT model_uri FROM {clickhouse_database}.models"}
    buckets = {"source": "k8s-etcd", "prefix": f"/lifeboat-test/{s3_bucket}/", "field": "bucket"}
    checks = [
        {"name": "model-uris-resolve", "references": {"from": model_uris, "to": {"source": "models"}}},
        {"name": "buckets-exist", "references": {"from": buckets, "to": {"source": "models"}}},
    ]
    builder.drill("platform-nightly", restore_point="platform", objectives={"rto": "30m", "rpo": "26h"}, checks=checks)
    config = init_repository(builder.write(tmp_path / "lifeboat.yaml"))
    return Platform(tmp_path, builder, config, clickhouse_database, s3_bucket)


def test_a_restore_point_of_three_sources_commits_complete_naming_each_snapshot_and_window(platform: Platform) -> None:
    document = platform.document("backup", "run", "--restore-point", "platform", code=0)
    assert document["errors"] == []
    snapshots = {item["source"]: item for item in document["snapshots"]}
    assert sorted(snapshots) == sorted(MEMBERS)
    point = document["restore_point"]
    assert point["name"] == "platform" and point["status"] == "complete" and point["failed"] == []
    assert [member["source"] for member in point["members"]] == MEMBERS
    for member in point["members"]:
        taken = snapshots[member["source"]]
        assert member["snapshot"] == taken["id"] and member["status"] == "committed"
        # each member's window lies within its own backup run
        start, end = (datetime.fromisoformat(member["window"][edge]) for edge in ("start", "end"))
        assert datetime.fromisoformat(taken["started"]) <= start <= end <= datetime.fromisoformat(taken["finished"])
    # the spread covers every member's window: from the first start to the last end
    starts = [datetime.fromisoformat(member["window"]["start"]) for member in point["members"]]
    ends = [datetime.fromisoformat(member["window"]["end"]) for member in point["members"]]
    assert point["spread_seconds"] == pytest.approx((max(ends) - min(starts)).total_seconds(), abs=0.002)

    listed = platform.document("restore-point", "list", code=0)["restore_points"]
    assert listed == [
        {
            "id": point["id"],
            "name": "platform",
            "time": point["time"],
            "status": "complete",
            "spread_seconds": point["spread_seconds"],
            "members": [{"source": m["source"], "snapshot": m["snapshot"]} for m in point["members"]],
            "failed": [],
        }
    ]
    shown = platform.document("restore-point", "show", point["id"][:-3], code=0)
    assert shown == point
    text = platform.run("restore-point", "show", "latest")
    assert text.exit_code == 0 and f"restore point {point['id']}: complete" in text.stdout
    # the manifest is sealed in the repository under restore-points/<name>/, not readable as plain JSON
    [stored] = (platform.root / "repo" / "restore-points" / "platform").iterdir()
    assert stored.name == f"{point['id']}.json" and b"complete" not in stored.read_bytes()


def test_writes_during_the_run_lie_within_the_recorded_windows_and_spread(platform: Platform, s3_server: Any) -> None:
    """The manifest tells the truth about how far apart the members are: an object written before the
    S3 member's window began is in its snapshot, and every object in it was written before the window
    ended; the spread covers that window."""
    client = s3_server.client()
    written: list[tuple[str, datetime, datetime]] = []  # key, put started, put finished
    stop = threading.Event()

    def write() -> None:
        index = 0
        while not stop.is_set():
            key = f"live/w{index:05d}.bin"
            began = datetime.now(UTC)
            client.put_object(Bucket=platform.bucket, Key=key, Body=os.urandom(200))
            written.append((key, began, datetime.now(UTC)))
            index += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while len(written) < 3:  # writes are under way before the run starts
            time.sleep(0.05)
        document = platform.document("backup", "run", "--restore-point", "platform", code=0)
    finally:
        stop.set()
        writer.join(timeout=60)
    point = document["restore_point"]
    [models] = [member for member in point["members"] if member["source"] == "models"]
    start, end = (datetime.fromisoformat(models["window"][edge]) for edge in ("start", "end"))
    listed = platform.document("snapshots", "ls", models["snapshot"], f"{platform.bucket}/live/", code=0)["entries"]
    in_snapshot = {item["name"].split("/", 1)[1] for item in listed}
    assert in_snapshot, "no write landed in the snapshot"
    for key, began, finished in written:
        if finished < start:
            assert key in in_snapshot, f"{key} was written before the window began, but is missing"
        if key in in_snapshot:
            assert began <= end, f"{key} was written after the window ended, yet is in the snapshot"
    assert point["spread_seconds"] >= (end - start).total_seconds()


def test_a_failing_member_leaves_a_failed_restore_point_naming_it_and_the_other_snapshots_intact(
    platform: Platform,
) -> None:
    broken = platform.variant("broken", "sources.models.buckets", ["no-such-bucket-for-lifeboat"])
    document = platform.document("backup", "run", "--restore-point", "platform", code=1, config=broken)
    assert [error["source"] for error in document["errors"]] == ["models"]
    assert "no-such-bucket-for-lifeboat" in document["errors"][0]["message"]
    point = document["restore_point"]
    assert point["status"] == "failed" and point["failed"] == ["models"]
    by_source = {member["source"]: member for member in point["members"]}
    assert by_source["models"]["snapshot"] is None and by_source["models"]["status"] == "failed"
    assert "no-such-bucket-for-lifeboat" in by_source["models"]["error"]
    # the good members are ordinary snapshots, restorable like any other
    good = {item["source"]: item["id"] for item in document["snapshots"]}
    assert sorted(good) == ["features", "k8s-etcd"]
    listed = {item["id"] for item in platform.document("snapshots", "list", code=0)["snapshots"]}
    assert set(good.values()) <= listed
    restored = platform.document(
        "restore", "k8s-etcd", "--snapshot", good["k8s-etcd"], "--to-file", str(platform.root / "etcd.db"), code=0
    )
    assert restored["snapshot"] == good["k8s-etcd"]
    # no complete restore point exists
    [item] = platform.document("restore-point", "list", code=0)["restore_points"]
    assert item["status"] == "failed" and item["failed"] == ["models"]
    text = platform.run("backup", "run", "--restore-point", "platform", config=broken)
    assert text.exit_code == 1 and "models: FAILED" in text.stderr and "failed: models" in text.stdout


def test_restore_point_usage_mistakes_exit_2(platform: Platform) -> None:
    unknown = platform.document("backup", "run", "--restore-point", "nope", code=2)
    assert "unknown restore point 'nope'" in unknown["error"]["message"] and "platform" in unknown["error"]["message"]
    both = platform.document("backup", "run", "--restore-point", "platform", "--source", "models", code=2)
    assert "not with --source" in both["error"]["message"]
    missing = platform.document("restore-point", "show", "platform-2020", code=1)
    assert missing["error"]["kind"] == "not-found"


def _members_of(document: dict[str, Any]) -> list[str]:
    return [member["snapshot"] for member in document["restore_point"]["members"]]


def test_prune_keeps_every_member_of_a_kept_restore_point_and_releases_them_when_it_is_forgotten(
    platform: Platform,
) -> None:
    for source in MEMBERS:
        platform.builder.set(f"sources.{source}.retention", {"keep_last": 3})
    platform.builder.write(platform.config)  # restore points: keep_last 1
    first = _members_of(platform.document("backup", "run", "--restore-point", "platform", code=0))
    second_run = platform.document("backup", "run", "--restore-point", "platform", code=0)
    second = _members_of(second_run)

    # The first restore point goes by its own retention, though its sources' rules still keep its members.
    pruned = platform.document("prune", code=0)
    [first_point] = pruned["restore_points_forgotten"]
    assert pruned["restore_points_kept"] == [second_run["restore_point"]["id"]]
    assert set(first) <= set(pruned["kept"]) and pruned["forgotten"] == []
    assert not any("restore point" in reason for snapshot in first for reason in pruned["reasons"][snapshot])
    listed = platform.document("restore-point", "list", code=0)["restore_points"]
    assert [item["id"] for item in listed] == [second_run["restore_point"]["id"]]
    gone = platform.document("restore-point", "show", first_point, code=1)
    assert gone["error"]["kind"] == "not-found"

    # Released, the first members go when their sources' rules let them go.
    platform.document("backup", "run", code=0)
    platform.document("backup", "run", code=0)
    pruned = platform.document("prune", code=0)
    assert sorted(pruned["forgotten"]) == sorted(first)
    assert set(second) <= set(pruned["kept"])

    # The kept restore point keeps its members past their sources' rules (keep_last 3).
    dry = platform.document("prune", "--dry-run", code=0)
    assert dry["forgotten"] == []
    platform.document("backup", "run", code=0)
    pruned = platform.document("prune", code=0)
    assert set(second) <= set(pruned["kept"]) and pruned["forgotten"] == []  # their rules alone: 4th newest goes
    point_id = second_run["restore_point"]["id"]
    for snapshot in second:
        assert f"member of restore point {point_id}, which is kept" in pruned["reasons"][snapshot]
    text = platform.run("prune", "--dry-run")
    assert f"keep   restore point {point_id}" in text.stdout
    # and the restore point is still whole: every member snapshot is there
    listed_ids = {item["id"] for item in platform.document("snapshots", "list", code=0)["snapshots"]}
    assert set(second) <= listed_ids


def test_restore_of_a_restore_point_puts_every_member_to_its_target_with_one_plan(
    platform: Platform, clickhouse_server: Any
) -> None:
    from clickhouse_driver import Client

    taken = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]
    snapshots = {member["source"]: member["snapshot"] for member in taken["members"]}
    database = f"{platform.database}_copy"
    targets = [
        "--to-file", str(platform.root / "restored" / "etcd.db"),
        "--to-host", "127.0.0.1", "--to-port", str(clickhouse_server.tcp_port),
        "--to-http-port", str(clickhouse_server.http_port), "--to-database", database,
        "--to-dir", str(platform.root / "restored" / "models"),
    ]  # fmt: skip
    client = Client("127.0.0.1", port=clickhouse_server.tcp_port)
    try:
        plan = platform.document("restore", "--restore-point", taken["id"][:-2], *targets, "--dry-run", code=0)
        assert plan["restore_point"] == taken["id"] and plan["dry_run"] is True
        assert [(item["source"], item["snapshot"]) for item in plan["members"]] == list(snapshots.items())
        assert all(item["dry_run"] and item["plan"] for item in plan["members"])
        assert not (platform.root / "restored").exists()
        text = platform.run("restore", "--restore-point", "latest", *targets, "--dry-run")
        assert text.exit_code == 0 and f"plan: restore point {taken['id']} (3 members)" in text.stdout

        restored = platform.document("restore", "--restore-point", "latest", *targets, code=0)
        assert [item["snapshot"] for item in restored["members"]] == list(snapshots.values())
        assert (platform.root / "restored" / "etcd.db").stat().st_size > 0
        assert len(list((platform.root / "restored" / "models").rglob("*.bin"))) == OBJECTS
        [(rows,)] = client.execute(f"SELECT count() FROM {database}.models")
        assert rows == OBJECTS
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {database}")


def test_restore_of_a_restore_point_refuses_what_cannot_work_before_writing_anything(platform: Platform) -> None:
    taken = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]
    out = str(platform.root / "restored" / "models")
    no_target = platform.document("restore", "--restore-point", taken["id"], "--to-dir", out, code=2)
    message = no_target["error"]["message"]
    assert "no target for member k8s-etcd (etcd: --to-file" in message and "features (clickhouse: --to-host" in message
    with_source = platform.document("restore", "models", "--restore-point", taken["id"], "--to-dir", out, code=2)
    assert "give no SOURCE" in with_source["error"]["message"]
    assert not (platform.root / "restored").exists()

    broken = platform.variant("broken", "sources.models.buckets", ["no-such-bucket-for-lifeboat"])
    failed = platform.document("backup", "run", "--restore-point", "platform", code=1, config=broken)["restore_point"]
    refused = platform.document("restore", "--restore-point", failed["id"], "--to-dir", out, code=1)
    assert refused["error"]["kind"] == "restore"
    assert "is failed (member models did not commit)" in refused["error"]["message"]


def _steps(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in document["steps"]}


def test_a_drill_of_a_restore_point_restores_every_member_and_passes_when_the_references_resolve(
    platform: Platform,
) -> None:
    taken = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]
    run = platform.document("drill", "run", "platform-nightly", "--no-email", code=0)
    assert run["verdict"] == "PASS", run
    assert run["restore_point"]["id"] == taken["id"] and run["restore_point"]["spread_seconds"] == taken["spread_seconds"]
    assert [(item["source"], item["snapshot"]) for item in run["sources"]] == [
        (member["source"], member["snapshot"]) for member in taken["members"]
    ]
    assert run["rto_seconds"] == pytest.approx(sum(item["rto_seconds"] for item in run["sources"]), abs=0.01)
    steps = _steps(run)
    assert "the platform's RPO bound" in steps["restore-point"]["message"]
    assert steps["check:model-uris-resolve"]["verdict"] == "PASS"
    assert f"all {OBJECTS} reference(s) from features exist" in steps["check:model-uris-resolve"]["message"]
    assert steps["check:buckets-exist"]["verdict"] == "PASS"  # 20 values, one bucket name
    assert "all 1 reference(s) from k8s-etcd" in steps["check:buckets-exist"]["message"]


def test_a_drill_of_a_restore_point_fails_naming_the_model_file_the_bucket_snapshot_lacks(
    platform: Platform, s3_server: Any
) -> None:
    s3_server.client().delete_object(Bucket=platform.bucket, Key="models/m3.bin")
    platform.document("backup", "run", "--restore-point", "platform", code=0)
    run = platform.document("drill", "run", "platform-nightly", "--no-email", code=1)
    assert run["verdict"] == "FAIL"
    failed = _steps(run)["check:model-uris-resolve"]
    assert failed["verdict"] == "FAIL"
    dangling = f"s3://{platform.bucket}/models/m3.bin"
    assert f"1 of {OBJECTS} reference(s) from features name nothing in the restored models: {dangling}" == failed["message"]
    assert failed["details"]["missing"] == [dangling] and failed["details"]["missing_count"] == 1
    assert _steps(run)["check:buckets-exist"]["verdict"] == "PASS"
    assert all(item["verdict"] == "PASS" for item in run["sources"])  # every member restored and verified


def test_a_drill_of_a_restore_point_errors_when_a_member_cannot_be_restored_or_there_is_none(platform: Platform) -> None:
    none_yet = platform.document("drill", "run", "platform-nightly", "--no-email", code=3)
    assert none_yet["verdict"] == "ERROR"
    assert "no complete restore point of 'platform'" in _steps(none_yet)["restore-point"]["message"]

    platform.document("backup", "run", "--restore-point", "platform", code=0)
    unreachable = platform.variant(
        "unreachable", "scratch.local.clickhouse", {"host": "127.0.0.1", "port": 1, "http_port": 1}
    )
    run = platform.document("drill", "run", "platform-nightly", "--no-email", code=3, config=unreachable)
    assert run["verdict"] == "ERROR"
    by_source = {item["source"]: item for item in run["sources"]}
    assert by_source["features"]["verdict"] == "ERROR" and by_source["features"]["rto_seconds"] is None
    assert run["rto_seconds"] is None  # the platform is not usable until every member is
    check = _steps(run)["check:model-uris-resolve"]
    assert check["verdict"] == "ERROR" and "no verified copy of features" in check["message"]


def test_a_failed_restore_point_keeps_none_of_its_members(platform: Platform) -> None:
    for source in MEMBERS:
        platform.builder.set(f"sources.{source}.retention", {"keep_last": 1})
    platform.builder.write(platform.config)
    broken = platform.variant("broken", "sources.models.buckets", ["no-such-bucket-for-lifeboat"])
    failed = platform.document("backup", "run", "--restore-point", "platform", code=1, config=broken)
    members = [snapshot for snapshot in _members_of(failed) if snapshot is not None]
    assert len(members) == 2
    platform.document("backup", "run", code=0)
    pruned = platform.document("prune", code=0)
    assert sorted(pruned["forgotten"]) == sorted(members)  # their sources' rules alone decide


def test_a_damaged_restore_point_manifest_is_named_never_read_as_something_else(platform: Platform) -> None:
    first = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]["id"]
    second = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]["id"]
    stored = platform.root / "repo" / "restore-points" / "platform" / f"{first}.json"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    listed = platform.document("restore-point", "list", code=0)["restore_points"]
    assert [item["id"] for item in listed] == [second]
    shown = platform.document("restore-point", "show", first, code=1)
    assert shown["error"]["kind"] == "integrity" and first in shown["error"]["message"]
    pruned = platform.document("prune", "--dry-run", code=0)
    assert pruned["restore_points_damaged"] == [first]
    # Whole and valid, but another restore point's manifest copied over this one's file.
    stored.write_bytes((stored.parent / f"{second}.json").read_bytes())
    shown = platform.document("restore-point", "show", first, code=1)
    assert shown["error"]["kind"] == "integrity"
    assert f"holds {second}, not {first}: refusing to use it" in shown["error"]["message"]
    targets = ["--to-file", str(platform.root / "etcd.db"), "--to-dir", str(platform.root / "m"), "--dry-run"]
    refused = platform.document("restore", "--restore-point", first, *targets, code=1)
    assert f"holds {second}, not {first}" in refused["error"]["message"]
    assert [item["id"] for item in platform.document("restore-point", "list", code=0)["restore_points"]] == [second]


def test_a_suspicious_member_is_flagged_by_the_backup_and_warned_of_by_the_restore(
    platform: Platform, s3_server: Any, clickhouse_server: Any
) -> None:
    platform.document("backup", "run", "--restore-point", "platform", code=0)
    client = s3_server.client()
    for i in range(OBJECTS - 2):  # mass deletion: the anomaly guard flags the next snapshot of models
        client.delete_object(Bucket=platform.bucket, Key=f"models/m{i}.bin")
    taken = platform.document("backup", "run", "--restore-point", "platform", code=4)
    point = taken["restore_point"]
    assert point["status"] == "complete"  # a suspicious snapshot is committed: the restore point is whole
    [models] = [item for item in taken["snapshots"] if item["source"] == "models"]
    assert models["status"] == "suspicious"
    ports = ["--to-port", str(clickhouse_server.tcp_port), "--to-http-port", str(clickhouse_server.http_port)]
    targets = ["--to-file", str(platform.root / "etcd.db"), "--to-host", "127.0.0.1", *ports, "--to-database", "unused"]
    result = platform.run(
        "restore", "--restore-point", point["id"], *targets, "--to-dir", str(platform.root / "m"), "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert f"WARNING: snapshot {models['id']} is suspicious" in result.stderr
    members = {item["source"]: item for item in json.loads(result.stdout)["members"]}
    assert members["models"]["suspicious"] is True and "shrank" in members["models"]["anomalies"][0]
    assert members["features"]["suspicious"] is False


def test_check_names_a_restore_point_whose_member_is_gone_or_whose_manifest_is_damaged(platform: Platform) -> None:
    point = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]
    assert platform.document("check", code=0)["restore_points"] == 1
    models = next(member["snapshot"] for member in point["members"] if member["source"] == "models")
    (platform.root / "repo" / "snapshots" / "models" / f"{models}.json.zst").unlink()
    damaged = platform.document("backup", "run", "--restore-point", "platform", code=0)["restore_point"]["id"]
    stored = platform.root / "repo" / "restore-points" / "platform" / f"{damaged}.json"
    stored.write_bytes(stored.read_bytes()[:-5])
    problems = [item for item in platform.document("check", code=1)["problems"] if item["kind"] == "restore-point"]
    assert len(problems) == 2
    [gone] = [item for item in problems if item.get("snapshot") == models]
    assert f"restore point {point['id']} names snapshot {models} of models, which is gone" in gone["message"]
    [unreadable] = [item for item in problems if damaged in item["message"]]
    assert "unreadable" in unreadable["message"]
