"""Sharded ClickHouse (logical) backups against the real 18.16 server: `lifeboat backup run --shard
I/N --part-of RUN` per shard, then `lifeboat backup merge`. The merged snapshot is fingerprint-equal
to an unsharded one, listed once, restored and verified, incremental next time like an unsharded
run; a native source refuses --shard."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.servers import ClickHouseProcess
from lifeboat.cli import cli

pytestmark = pytest.mark.integration

SOURCE = "features"
SHARDS = 3


def http(server: ClickHouseProcess, statement: str) -> bytes:
    request = urllib.request.Request(server.http_url, data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        return body


@dataclass(frozen=True)
class Lifeboat:
    config: Path
    repository: Path

    def __call__(self, *args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        exit_code, stdout, stderr = self(*args, "--json")
        assert exit_code == code, f"exit {exit_code}, stderr:\n{stderr[-3000:]}"
        document: dict[str, Any] = json.loads(stdout)
        return document

    def sharded(self, run: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every shard's part (as `backup run --shard` reports it), then the merged snapshot."""
        parts = []
        for index in range(1, SHARDS + 1):
            report = self.json("backup", "run", "--source", SOURCE, "--shard", f"{index}/{SHARDS}", "--part-of", run)
            parts += report["snapshots"]
        report = self.json("backup", "merge", "--source", SOURCE, "--part-of", run)
        assert report["errors"] == []
        return parts, report["snapshots"][0]

    def whole(self) -> dict[str, Any]:
        [snapshot] = self.json("backup", "run", "--source", SOURCE)["snapshots"]
        return dict(snapshot)

    def show(self, snapshot_id: str) -> dict[str, Any]:
        return self.json("snapshots", "show", snapshot_id)

    def listed(self) -> list[str]:
        return [item["id"] for item in self.json("snapshots", "list", "--source", SOURCE)["snapshots"]]

    def parts(self) -> list[str]:
        return [stored.key for stored in Repository.open(LocalStore(self.repository)).list_parts()]


def write_policy(directory: Path, server: ClickHouseProcess, database: str, *, strategy: str = "logical") -> Lifeboat:
    directory.mkdir(parents=True, exist_ok=True)
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    server_ports = {"host": server.host, "port": server.tcp_port, "http_port": server.http_port}
    policy.source(
        SOURCE,
        "clickhouse",
        **server_ports,
        databases=[database],
        strategy=strategy,
        parallel=2,
        retention={"keep_last": 10},
    )
    if strategy == "logical":
        policy.executor("kubernetes", kubernetes={"shards": {SOURCE: SHARDS}})
    return Lifeboat(init_repository(policy.write(directory / "lifeboat.yaml")), directory / "repo")


@pytest.fixture
def feature_store(clickhouse_server: ClickHouseProcess) -> Iterator[str]:
    """A database of partitioned and unpartitioned tables, a view, a materialized view and a Log table."""
    db = f"shards_{uuid.uuid4().hex[:8]}"
    statements = [
        f"CREATE DATABASE {db}",
        f"CREATE TABLE {db}.events (day Date, user_id UInt64, feature String, value Float64)"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user_id)",
        f"CREATE MATERIALIZED VIEW {db}.feature_counts ENGINE = SummingMergeTree PARTITION BY tuple() ORDER BY feature"
        f" AS SELECT feature, count() AS n FROM {db}.events GROUP BY feature",
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 91, number, concat('f', toString(number % 50)),"
        " number / 7 FROM system.numbers LIMIT 30000",
        f"CREATE VIEW {db}.daily AS SELECT day, count() AS n FROM {db}.events GROUP BY day",
        f"CREATE TABLE {db}.user_latest (user_id UInt64, version UInt32, score Float32)"
        " ENGINE = ReplacingMergeTree(version) ORDER BY user_id",
        f"INSERT INTO {db}.user_latest SELECT number, 1, number / 3 FROM system.numbers LIMIT 5000",
        f"CREATE TABLE {db}.audit_log (ts DateTime, message String) ENGINE = Log",
        f"INSERT INTO {db}.audit_log VALUES ('2026-11-01 00:00:00', 'drill'), ('2026-11-02 00:00:00', 'line\\nbreak')",
        f"CREATE TABLE {db}.`odd name-ü x` (k UInt32, `v alue` String) ENGINE = MergeTree ORDER BY k",
        f"INSERT INTO {db}.`odd name-ü x` SELECT number, toString(number) FROM system.numbers LIMIT 1000",
    ]
    for number in range(6):
        statements.append(f"CREATE TABLE {db}.t{number} (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
        statements.append(
            f"INSERT INTO {db}.t{number} SELECT number, toString(number * {number}) FROM system.numbers LIMIT 500"
        )
    for statement in statements:
        http(clickhouse_server, statement)
    for table in ("events", "user_latest", "`.inner.feature_counts`", *(f"t{number}" for number in range(6))):
        http(clickhouse_server, f"OPTIMIZE TABLE {db}.{table} FINAL")
        http(clickhouse_server, f"SYSTEM STOP MERGES {db}.{table}")  # parts stay put between the runs
    yield db
    http(clickhouse_server, f"DROP DATABASE IF EXISTS {db}")


def test_sharded_clickhouse_merges_into_one_snapshot_equal_to_an_unsharded_one(
    clickhouse_server: ClickHouseProcess, feature_store: str, tmp_path: Path
) -> None:
    lifeboat = write_policy(tmp_path / "sharded", clickhouse_server, feature_store)
    whole = write_policy(tmp_path / "whole", clickhouse_server, feature_store)

    parts, merged = lifeboat.sharded("night-1")
    unsharded = whole.whole()

    assert sum(part["tables"] for part in parts) == merged["tables"] == unsharded["tables"] == 11
    assert sum(1 for part in parts if part["tables"]) >= 2, "the tables spread over the shards"
    assert merged["rows"] == unsharded["rows"] and merged["status"] == "good" and merged["shards"] == SHARDS
    assert lifeboat.listed() == [merged["id"]] and lifeboat.parts() == []
    mine, theirs = lifeboat.show(merged["id"]), whole.show(unsharded["id"])
    assert mine["fingerprint"] == theirs["fingerprint"]  # held-back tables too, worked out over every table
    assert mine["census"]["totals"] == theirs["census"]["totals"]
    assert mine["census"]["tables"] == theirs["census"]["tables"]
    assert mine["entries"] == theirs["entries"]

    scratch = f"scratch_{uuid.uuid4().hex[:8]}"
    try:
        exit_code, stdout, stderr = lifeboat(
            "restore", SOURCE, "--to-host", clickhouse_server.host, "--to-port", str(clickhouse_server.tcp_port),
            "--to-http-port", str(clickhouse_server.http_port), "--to-database", scratch,
        )  # fmt: skip
        assert exit_code == 0, stderr
        assert "verified" in stdout
        count = http(
            clickhouse_server,
            f"SELECT count(), sum(user_id), sum(cityHash64(feature, value)) FROM {scratch}.events FORMAT TSV",
        )
        assert count == http(
            clickhouse_server,
            f"SELECT count(), sum(user_id), sum(cityHash64(feature, value)) FROM {feature_store}.events FORMAT TSV",
        )
        names = http(
            clickhouse_server, f"SELECT name FROM system.tables WHERE database = '{scratch}' ORDER BY name FORMAT TSV"
        )
        assert set(names.decode().split("\n")) >= {"events", "feature_counts", "daily", "audit_log", "odd name-ü x"}
    finally:
        http(clickhouse_server, f"DROP DATABASE IF EXISTS {scratch}")

    http(clickhouse_server, f"INSERT INTO {feature_store}.events VALUES ('2026-11-20', 999999, 'f1', 1.5)")
    http(clickhouse_server, f"INSERT INTO {feature_store}.t3 VALUES (9999, 'new')")
    _, second = lifeboat.sharded("night-2")
    unsharded_second = whole.whole()

    for figure in ("partitions_exported", "partitions_reused", "whole_tables_exported", "rows", "tables"):
        assert second[figure] == unsharded_second[figure], figure
    assert second["partitions_reused"] > second["partitions_exported"] > 0
    assert second["bytes_read"] < merged["bytes_read"] / 2
    assert lifeboat.show(second["id"])["fingerprint"] == whole.show(unsharded_second["id"])["fingerprint"]
    assert lifeboat.show(second["id"])["census"]["changed_fraction"] == 0
    assert lifeboat.listed() == [merged["id"], second["id"]]
    check = lifeboat.json("check", "--read-data")
    assert check["ok"] and check["snapshots"] == 2 and check["parts"] == 0


def test_a_native_source_refuses_shards(clickhouse_server: ClickHouseProcess, tmp_path: Path) -> None:
    lifeboat = write_policy(tmp_path, clickhouse_server, "default", strategy="native")
    exit_code, _, stderr = lifeboat("backup", "run", "--source", SOURCE, "--shard", "1/2", "--part-of", "r")
    assert exit_code == 2
    assert "strategy native" in stderr and "only logical backups can be sharded" in stderr
