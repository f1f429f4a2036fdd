"""The ClickHouse source against a real 18.16 server (logical) and the modern engine in chdb (native).

A feature-store-like database (monthly partitions with 1.2 million rows, ReplacingMergeTree with
duplicates, a table of tricky bytes and types, a view and a materialized view, a Log table, a Buffer,
an odd quoted name) is backed up and restored through the CLI, then checked row by row where a user
would look; the verifier is shown to catch one changed value; failures are clear and commit nothing.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from clickhouse_driver import Client
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.execute import free_port
from backup.jobs import run_backup
from backup.repository import open_repository
from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.servers import ClickHouseProcess
from backup.sources.base import RestoreOptions, Verdict
from backup.sources.clickhouse.chain import NativeBackupInfo, deletable_native_backups, native_backup_locations
from backup.sources.clickhouse.client import ChdbExecutor, Endpoint
from backup.sources.clickhouse.source import ClickHouseSource
from lifeboat.cli import cli
from policies.errors import SourceError
from policies.model import ClickHouseSettings
from policies.model import Repository as RepositorySettings

pytestmark = pytest.mark.integration

SOURCE = "features"
EVENT_ROWS = 1_200_000
MONTHS = ("202609", "202610", "202611")  # 91 days from 2026-09-01
FILLER = "x" * 100


@dataclass
class Store:
    """The feature-store database on the session's 18.16 server, its policy file and repository."""

    server: ClickHouseProcess
    database: str
    directory: Path
    scratch: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.directory / "lifeboat.yaml"

    def client(self, **settings: Any) -> Client:
        return Client(host=self.server.host, port=self.server.tcp_port, settings=settings)

    def sql(self, statement: str, **settings: Any) -> list[tuple[Any, ...]]:
        client = self.client(**settings)
        try:
            return list(client.execute(statement))
        finally:
            client.disconnect()

    def scratch_database(self, label: str) -> str:
        name = f"scratch_{label}_{uuid.uuid4().hex[:6]}"
        self.scratch.append(name)
        return name

    def restore_args(self, database: str) -> list[str]:
        return [
            "restore",
            SOURCE,
            "--to-host",
            self.server.host,
            "--to-port",
            str(self.server.tcp_port),
            "--to-http-port",
            str(self.server.http_port),
            "--to-database",
            database,
        ]

    def repository(self) -> Repository:
        return Repository.open(LocalStore(self.directory / "repo"))

    def source(self) -> ClickHouseSource:
        return ClickHouseSource(SOURCE, clickhouse_settings(self.server, [self.database]))


def clickhouse_settings(server: ClickHouseProcess, databases: list[str], **extra: Any) -> ClickHouseSettings:
    return ClickHouseSettings.model_validate(
        {
            "kind": "clickhouse",
            "host": server.host,
            "port": server.tcp_port,
            "http_port": server.http_port,
            "databases": databases,
            "parallel": 2,
            **extra,
        }
    )


def write_policy(directory: Path, *, host: str, port: int, http_port: int, database: str, **settings: Any) -> Path:
    """``settings``: the source's other keys (password...)."""
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    policy.source(
        SOURCE,
        "clickhouse",
        host=host,
        port=port,
        http_port=http_port,
        databases=[database],
        parallel=2,
        retention={"keep_last": 10},
        **settings,
    )
    return init_repository(policy.write(directory / "lifeboat.yaml"))


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def backup_json(config: Path) -> dict[str, Any]:
    result = lifeboat(config, "backup", "run", "--source", SOURCE, "--json")
    assert result.exit_code == 0, result.stderr
    [snapshot] = json.loads(result.stdout)["snapshots"]
    return snapshot


def http(server: ClickHouseProcess, statement: str) -> bytes:
    """Run one statement over HTTP (clickhouse-driver waits for data after an inline INSERT .. VALUES)."""
    request = urllib.request.Request(server.http_url, data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        return body


def create_feature_store(server: ClickHouseProcess, db: str) -> None:
    """Every shape the source must handle, filled in seconds (INSERT .. SELECT FROM system.numbers)."""
    statements = [
        f"CREATE DATABASE {db}",
        f"CREATE TABLE {db}.events (day Date, user_id UInt64, feature String, value Float64, tags Array(String))"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user_id)",
        f"CREATE MATERIALIZED VIEW {db}.feature_counts ENGINE = SummingMergeTree PARTITION BY tuple() ORDER BY feature"
        f" AS SELECT feature, count() AS n FROM {db}.events GROUP BY feature",
        f"SYSTEM STOP MERGES {db}.`.inner.feature_counts`",
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 91, number, concat('f', toString(number % 50)),"
        f" number / 7, [toString(number % 3)] FROM system.numbers LIMIT {EVENT_ROWS}",
        f"CREATE VIEW {db}.daily AS SELECT day, count() AS n FROM {db}.events GROUP BY day",
        f"CREATE TABLE {db}.user_latest (user_id UInt64, version UInt32, score Float32)"
        " ENGINE = ReplacingMergeTree(version) ORDER BY user_id",
        f"SYSTEM STOP MERGES {db}.user_latest",  # keep the duplicates across parts, as a busy table has them
        f"INSERT INTO {db}.user_latest SELECT number, 1, number / 3 FROM system.numbers LIMIT 5000",
        f"INSERT INTO {db}.user_latest SELECT number, 2, number / 5 FROM system.numbers LIMIT 2500",
        f"CREATE TABLE {db}.tricky (id UInt32, s String, n Nullable(Int64), arr Array(Nullable(String)),"
        " d Decimal(18, 4), t DateTime, fs FixedString(4), e Enum8('a' = 1, 'b' = 2), ns Nullable(String))"
        " ENGINE = MergeTree ORDER BY id",
        f"INSERT INTO {db}.tricky VALUES (1, 'nul\\0byte\\nnew\\tline', NULL, ['x', NULL], 12.3456,"
        " '2026-11-01 10:00:00', 'ab\\0\\0', 'a', NULL), (2, 'bad utf8 \\xff\\xfe quotes \\' \" ` back\\\\slash',"
        " -5, [], -0.0001, '2026-11-02 00:00:00', '\\xff\\xff\\xff\\xff', 'b', 'x'), (3, '', 0, [NULL], 0,"
        " '2026-11-03 00:00:00', '', 'a', '')",
        f"CREATE TABLE {db}.audit_log (ts DateTime, message String) ENGINE = Log",
        f"INSERT INTO {db}.audit_log VALUES ('2026-11-01 00:00:00', 'drill'), ('2026-11-02 00:00:00', 'line\\nbreak')",
        f"CREATE TABLE {db}.`odd name-ü x` (k UInt32, `v alue` String) ENGINE = MergeTree ORDER BY k",
        f"INSERT INTO {db}.`odd name-ü x` SELECT number, toString(number) FROM system.numbers LIMIT 1000",
        f"CREATE TABLE {db}.events_buffer AS {db}.events"
        f" ENGINE = Buffer({db}, events, 16, 10, 100, 10000, 1000000, 10000000, 100000000)",
    ]
    for statement in statements:
        http(server, statement)
    for month in MONTHS:  # one part per partition, so background merges do not move parts under the tests
        http(server, f"OPTIMIZE TABLE {db}.events PARTITION {month} FINAL")
    http(server, f"SYSTEM STOP MERGES {db}.events")


@pytest.fixture(scope="module")
def store(clickhouse_server: ClickHouseProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    database = f"fs_{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("clickhouse-source")
    found = Store(clickhouse_server, database, directory)
    write_policy(
        directory,
        host=clickhouse_server.host,
        port=clickhouse_server.tcp_port,
        http_port=clickhouse_server.http_port,
        database=database,
    )
    client = found.client()
    try:
        create_feature_store(clickhouse_server, database)
        yield found
    finally:
        for name in [database, *found.scratch]:
            client.execute(f"DROP DATABASE IF EXISTS {name}")
        client.disconnect()


@pytest.fixture(scope="module")
def first_backup(store: Store) -> dict[str, Any]:
    return backup_json(store.config)


def restore_json(store: Store, *args: str) -> dict[str, Any]:
    result = lifeboat(store.config, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# ---- logical backup and restore through the CLI --------------------------------------------------------


def test_backup_reports_tables_partitions_and_rows(store: Store, first_backup: dict[str, Any]) -> None:
    assert (first_backup["status"], first_backup["kind"], first_backup["strategy"]) == ("good", "clickhouse", "logical")
    assert first_backup["server_version"] == "18.16.1"
    # events x3 months, user_latest, tricky, the odd table, the view's storage; audit_log is exported whole
    assert (first_backup["partitions_exported"], first_backup["partitions_reused"]) == (7, 0)
    assert first_backup["whole_tables_exported"] == 1
    assert first_backup["tables"] == 6 and first_backup["definitions_only"] == 3  # daily, feature_counts, events_buffer
    [(view_rows,)] = store.sql(f"SELECT count() FROM {store.database}.`.inner.feature_counts`")
    assert first_backup["rows"] == EVENT_ROWS + 7500 + 3 + 2 + 1000 + view_rows
    assert first_backup["bytes_read"] > 20 * 1024 * 1024  # the Native data really went through
    header = store.repository().read_header(first_backup["id"])
    assert header.census["totals"]["rows"] == first_backup["rows"] and header.census["totals"]["bytes"] > 0
    buffer = next(item for item in header.meta["definitions_only"] if item["table"].endswith("events_buffer"))
    assert "holds no data of its own" in buffer["reason"]


def test_restore_into_another_database_is_equal_row_for_row(store: Store, first_backup: dict[str, Any]) -> None:
    scratch = store.scratch_database("full")
    restored = restore_json(store, *store.restore_args(scratch), "--snapshot", first_backup["id"])

    assert restored["verification"]["verdict"] == "match", restored["verification"]
    source, copy = store.database, scratch
    raw = {"strings_as_bytes": True}
    assert store.sql(f"SELECT * FROM {copy}.tricky ORDER BY id", **raw) == store.sql(
        f"SELECT * FROM {source}.tricky ORDER BY id", **raw
    )
    assert (
        store.sql(f"SELECT s FROM {copy}.tricky WHERE id = 2", **raw)[0][0] == b"bad utf8 \xff\xfe quotes ' \" ` back\\slash"
    )
    for query in (
        "SELECT count(), sum(user_id), groupBitXor(cityHash64(feature, value, tags)) FROM {db}.events",
        "SELECT toYYYYMM(day) AS m, count() FROM {db}.events GROUP BY m ORDER BY m",
        "SELECT count(), sum(version) FROM {db}.user_latest",  # duplicates kept as backed up
        "SELECT * FROM {db}.user_latest FINAL ORDER BY user_id LIMIT 10",
        "SELECT feature, sum(n) FROM {db}.feature_counts GROUP BY feature ORDER BY feature",
        "SELECT * FROM {db}.daily ORDER BY day",
        "SELECT * FROM {db}.audit_log ORDER BY ts",
        "SELECT count(), sum(k), max(`v alue`) FROM {db}.`odd name-ü x`",
    ):
        assert store.sql(query.format(db=copy)) == store.sql(query.format(db=source)), query
    [(buffer_ddl,)] = store.sql(f"SHOW CREATE TABLE {copy}.events_buffer")
    assert f"Buffer({copy}, events" in buffer_ddl.replace("`", ""), "a restored Buffer must flush into the copy"
    assert source not in store.sql(f"SHOW CREATE TABLE {copy}.daily")[0][0]


def test_incremental_backup_exports_only_the_changed_partition(store: Store, first_backup: dict[str, Any]) -> None:
    db = store.database
    http(store.server, f"INSERT INTO {db}.events VALUES ('2026-10-15', 9999999, 'fresh', 1.5, ['new'])")

    second = backup_json(store.config)

    # The insert changed one partition of events and, through the materialized view, its storage.
    assert second["exported"] == [
        f"{db}.`.inner.feature_counts` partition all",
        f"{db}.audit_log",  # no partitions: exported whole every time
        f"{db}.events partition 202610",
    ]
    assert (second["partitions_exported"], second["partitions_reused"], second["whole_tables_exported"]) == (2, 5, 1)
    assert second["bytes_read"] < first_backup["bytes_read"] / 2
    assert second["status"] == "good" and second["rows"] == first_backup["rows"] + 2

    scratch = store.scratch_database("second")
    restored = restore_json(store, *store.restore_args(scratch), "--tables", "events")
    assert restored["snapshot"] == second["id"] and restored["verification"]["verdict"] == "match"
    assert store.sql(
        f"SELECT user_id, feature, tags FROM {scratch}.events WHERE day = '2026-10-15' AND feature = 'fresh'"
    ) == [(9999999, "fresh", ["new"])]
    assert store.sql(f"SELECT count() FROM {scratch}.events") == [(EVENT_ROWS + 1,)]


def test_a_changed_value_in_the_copy_fails_verification_naming_table_and_partition(
    store: Store, first_backup: dict[str, Any]
) -> None:
    scratch = store.scratch_database("tamper")
    restore_json(store, *store.restore_args(scratch), "--snapshot", first_backup["id"], "--tables", "events")
    source = store.source()
    target = source.parse_target(
        RestoreOptions.of(
            to_host=store.server.host,
            to_port=store.server.tcp_port,
            to_http_port=store.server.http_port,
            to_database=scratch,
            tables=("events",),
        )
    )
    header = store.repository().read_header(first_backup["id"])
    assert source.verify(header, target).verdict is Verdict.MATCH

    # One value changed in 202609 (same row count), one row more in 202611.
    store.sql(f"ALTER TABLE {scratch}.events DROP PARTITION 202609")
    store.sql(
        f"INSERT INTO {scratch}.events SELECT day, user_id, if(user_id = 91, 'tampered', feature), value, tags"
        f" FROM {store.database}.events WHERE toYYYYMM(day) = 202609"
    )
    http(store.server, f"INSERT INTO {scratch}.events VALUES ('2026-11-30', 1, 'extra', 0, [])")

    verification = source.verify(header, target)

    assert verification.verdict is Verdict.MISMATCH
    by_month = f"SELECT toString(toYYYYMM(day)) AS m, count() FROM {store.database}.events GROUP BY m"
    rows = dict(store.sql(by_month))
    assert verification.differences == [
        f"{store.database}.events partition 202609: count {rows['202609']} equal, hash differs",
        f"{store.database}.events partition 202611: count {rows['202611']} vs {rows['202611'] + 1}, hash differs",
    ]


def test_dry_run_prints_the_plan_and_creates_nothing(store: Store, first_backup: dict[str, Any]) -> None:
    scratch = store.scratch_database("dry")
    result = lifeboat(store.config, *store.restore_args(scratch), "--snapshot", first_backup["id"], "--dry-run")

    assert result.exit_code == 0, result.stderr
    assert f"create {scratch}.events (MergeTree): 3 partitions" in result.stdout
    september = store.sql(f"SELECT count() FROM {store.database}.events WHERE toYYYYMM(day) = 202609")[0][0]
    assert f"  partition 202609: {september} rows, " in result.stdout
    assert f"create {scratch}.daily (View)" in result.stdout
    assert "with the source's password" in result.stdout
    assert "does not exist yet" in result.stdout
    assert store.sql(f"SELECT count() FROM system.databases WHERE name = '{scratch}'") == [(0,)]


def test_a_non_empty_target_is_refused_without_yes(store: Store, first_backup: dict[str, Any]) -> None:
    scratch = store.scratch_database("busy")
    store.sql(f"CREATE DATABASE {scratch}")
    store.sql(f"CREATE TABLE {scratch}.keep_me (k UInt8) ENGINE = Memory")
    store.sql(f"CREATE TABLE {scratch}.tricky (k UInt8) ENGINE = Memory")
    args = [*store.restore_args(scratch), "--snapshot", first_backup["id"], "--tables", "tricky"]

    refused = lifeboat(store.config, *args)
    assert refused.exit_code == 1
    assert f"target database {scratch}" in refused.stderr and "is not empty" in refused.stderr and "--yes" in refused.stderr
    assert store.sql(f"SELECT name FROM system.columns WHERE database = '{scratch}' AND table = 'tricky'") == [("k",)]

    accepted = lifeboat(store.config, *args, "--yes")
    assert accepted.exit_code == 0, accepted.stderr
    assert store.sql(f"SELECT count() FROM {scratch}.tricky") == [(3,)]
    assert store.sql(f"EXISTS TABLE {scratch}.keep_me") == [(1,)], "tables the snapshot does not have are left alone"


@pytest.mark.parametrize("same", ["--to-port", "--to-http-port"])
def test_the_source_database_is_never_a_target(store: Store, same: str) -> None:
    port = str(store.server.tcp_port if same == "--to-port" else store.server.http_port)
    result = lifeboat(store.config, "restore", SOURCE, "--to-host", "localhost", same, port, "--to-database", store.database)
    assert result.exit_code == 1
    assert "that is the source itself" in result.stderr


def test_options_of_another_kind_are_refused(store: Store) -> None:
    result = lifeboat(store.config, "restore", SOURCE, "--to-bucket", "models", "--to-database", "x")
    assert result.exit_code == 2  # a usage mistake
    assert "--to-bucket does not apply to a ClickHouse source" in result.stderr and "--to-host" in result.stderr


def test_verify_says_unverified_when_the_target_cannot_be_read(store: Store, first_backup: dict[str, Any]) -> None:
    source = store.source()
    header = store.repository().read_header(first_backup["id"])
    missing = source.parse_target(
        RestoreOptions.of(
            to_host="127.0.0.1", to_port=store.server.tcp_port, to_http_port=store.server.http_port, to_database="no_such_db"
        )
    )
    result = source.verify(header, missing)
    assert result.verdict is Verdict.UNVERIFIED and "no_such_db does not exist" in result.message
    down = source.parse_target(RestoreOptions.of(to_host="127.0.0.1", to_port=free_port(), to_database="scratch"))
    result = source.verify(header, down)
    assert result.verdict is Verdict.UNVERIFIED and "cannot reach ClickHouse" in result.message


# ---- failures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["server down", "wrong password"])
def test_a_failed_backup_is_clear_and_commits_nothing(store: Store, tmp_path: Path, problem: str) -> None:
    port = free_port() if problem == "server down" else store.server.tcp_port
    extra = {"password": "not-the-password-123"} if problem == "wrong password" else {}
    config = write_policy(
        tmp_path, host="127.0.0.1", port=port, http_port=store.server.http_port, database=store.database, **extra
    )

    result = lifeboat(config, "backup", "run", "--source", SOURCE, "--json")

    assert result.exit_code == 1
    [error] = json.loads(result.stdout)["errors"]
    expected = f"cannot reach ClickHouse at 127.0.0.1:{port}" if problem == "server down" else "refused user 'default'"
    assert expected in error["message"]
    assert "not-the-password-123" not in result.stdout + result.stderr
    listed = lifeboat(config, "snapshots", "list", "--json")
    assert json.loads(listed.stdout)["snapshots"] == []


def test_a_table_dropped_during_the_backup_fails_it(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE TABLE {db}.a_big (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    client.execute(
        f"INSERT INTO {db}.a_big SELECT number, concat(toString(number), '{FILLER}') FROM system.numbers LIMIT 100000"
    )
    client.execute(f"CREATE TABLE {db}.b_small (k UInt64) ENGINE = MergeTree ORDER BY k")
    http(clickhouse_server, f"INSERT INTO {db}.b_small VALUES (1)")
    dropped: list[bool] = []

    def drop_b_once(_: int) -> None:  # called as a_big's data streams in: b_small is exported after it
        if not dropped:
            client.execute(f"DROP TABLE {db}.b_small")
            dropped.append(True)

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = clickhouse_settings(clickhouse_server, [db], parallel=1)
    try:
        with pytest.raises(SourceError, match=r"b_small disappeared during the backup .*nothing was committed"):
            run_backup(repository, SOURCE, settings, progress=drop_b_once)
        assert dropped and repository.snapshot_ids(SOURCE) == []
    finally:
        repository.close()
        client.disconnect()


def test_a_merge_during_an_export_is_retried_and_the_snapshot_pinned(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE TABLE {db}.t (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    for start in (0, 50000):  # two parts of ~3 MiB of Native together: the export takes several blocks
        client.execute(f"INSERT INTO {db}.t SELECT number + {start}, '{FILLER[:60]}' FROM system.numbers LIMIT 50000")
    merged: list[bool] = []

    def merge_once(_: int) -> None:  # the parts being exported are merged away under the export
        if not merged:
            client.execute(f"OPTIMIZE TABLE {db}.t FINAL")
            merged.append(True)

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = clickhouse_settings(clickhouse_server, [db], parallel=1)
    try:
        result = run_backup(repository, SOURCE, settings, progress=merge_once)
        assert merged and result.figures["retries"] == 1 and result.figures["unpinned"] == 0
        scratch = f"{db}_copy"
        source = ClickHouseSource(SOURCE, settings)
        options = RestoreOptions.of(
            to_host=clickhouse_server.host,
            to_port=clickhouse_server.tcp_port,
            to_http_port=clickhouse_server.http_port,
            to_database=scratch,
        )
        restored = source.restore(repository, result.header, source.parse_target(options), options=options)
        assert restored.figures["verification"]["verdict"] == "match"
        assert client.execute(f"SELECT count(), uniqExact(k) FROM {scratch}.t") == [(100000, 100000)]
        [moved] = result.header.meta["consistency"]["moved"]  # the re-pin is recorded
        assert moved["table"] == f"{db}.t" and moved["partitions"] == ["all"] and "pinned again" in moved["why"]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}_copy")
        repository.close()
        client.disconnect()


# ---- definitions: a restored copy with another schema is a mismatch ------------------------------------


def create_schema_store(server: ClickHouseProcess, db: str) -> None:
    """A small database of every kind of definition: a table, a view, a materialized view, a Log table.
    ``user`` values are exactly 16 bytes, so a FixedString(16) copy holds the very same bytes."""
    for statement in (
        f"CREATE DATABASE {db}",
        f"CREATE TABLE {db}.events (day Date, id UInt64, user String, value Float64)"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, id)",
        f"CREATE MATERIALIZED VIEW {db}.feature_counts ENGINE = SummingMergeTree PARTITION BY tuple() ORDER BY user"
        f" AS SELECT user, count() AS n FROM {db}.events GROUP BY user",
        f"SYSTEM STOP MERGES {db}.`.inner.feature_counts`",
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 61, number,"
        " substring(hex(MD5(toString(number % 40))), 1, 16), number / 7 FROM system.numbers LIMIT 3000",
        f"CREATE VIEW {db}.daily AS SELECT day, count() AS n FROM {db}.events GROUP BY day",
        f"CREATE TABLE {db}.audit_log (ts DateTime, message String) ENGINE = Log",
        f"INSERT INTO {db}.audit_log VALUES ('2026-11-01 00:00:00', 'drill'), ('2026-11-02 00:00:00', 'again')",
    ):
        http(server, statement)


@pytest.fixture(scope="module")
def schema_store(clickhouse_server: ClickHouseProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    database = f"defs_{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("clickhouse-definitions")
    found = Store(clickhouse_server, database, directory)
    write_policy(
        directory,
        host=clickhouse_server.host,
        port=clickhouse_server.tcp_port,
        http_port=clickhouse_server.http_port,
        database=database,
    )
    try:
        create_schema_store(clickhouse_server, database)
        yield found
    finally:
        for name in [database, *found.scratch]:
            http(clickhouse_server, f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def schema_backup(schema_store: Store) -> dict[str, Any]:
    return backup_json(schema_store.config)


def restored_copy(store: Store, snapshot: str, label: str) -> tuple[str, Any]:
    """A fresh restore of ``snapshot`` and the target to verify it with."""
    scratch = store.scratch_database(label)
    restored = restore_json(store, *store.restore_args(scratch), "--snapshot", snapshot)
    assert restored["verification"]["verdict"] == "match", restored["verification"]
    target = store.source().parse_target(
        RestoreOptions.of(
            to_host=store.server.host,
            to_port=store.server.tcp_port,
            to_http_port=store.server.http_port,
            to_database=scratch,
        )
    )
    return scratch, target


# Each tamper leaves the rows as they were (the data prints still match): only the definitions differ.
SCHEMA_TAMPERS: dict[str, tuple[list[str], str]] = {
    "column type": (
        ["ALTER TABLE {copy}.events MODIFY COLUMN user FixedString(16)"],
        "table events: column user: String in the snapshot, FixedString(16) in the copy",
    ),
    "order by": (
        [
            "CREATE TABLE {copy}.events2 AS {copy}.events ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (id, day)",
            "INSERT INTO {copy}.events2 SELECT * FROM {copy}.events",
            "DROP TABLE {copy}.events",
            "RENAME TABLE {copy}.events2 TO {copy}.events",
        ],
        "table events: sorting key day, id in the snapshot, id, day in the copy",
    ),
    "engine": (
        [
            "CREATE TABLE {copy}.audit2 AS {copy}.audit_log ENGINE = TinyLog",
            "INSERT INTO {copy}.audit2 SELECT * FROM {copy}.audit_log",
            "DROP TABLE {copy}.audit_log",
            "RENAME TABLE {copy}.audit2 TO {copy}.audit_log",
        ],
        "table audit_log: engine Log in the snapshot, TinyLog in the copy",
    ),
    "dropped view": (["DROP TABLE {copy}.daily"], "view daily: in the snapshot, not in the copy"),
    "redefined view": (
        [
            "DROP TABLE {copy}.daily",
            "CREATE VIEW {copy}.daily AS SELECT day, count() AS n FROM {copy}.events WHERE id > 10 GROUP BY day",
        ],
        "view daily: definition differs",
    ),
    "materialized view replaced by a table": (
        [
            "CREATE TABLE {copy}.fc ENGINE = SummingMergeTree PARTITION BY tuple() ORDER BY user"
            " AS SELECT * FROM {copy}.feature_counts",
            "DROP TABLE {copy}.feature_counts",
            "RENAME TABLE {copy}.fc TO {copy}.feature_counts",
        ],
        "materialized view feature_counts: a table (SummingMergeTree) in the copy",
    ),
    "extra column": (
        ["ALTER TABLE {copy}.events ADD COLUMN extra UInt8 DEFAULT 0"],
        "table events: column extra: in the copy, not in the snapshot",
    ),
    "extra table": (
        ["CREATE TABLE {copy}.extra (k UInt8) ENGINE = Memory"],
        "table extra: in the copy, not in the snapshot",
    ),
}


@pytest.mark.parametrize("tamper", sorted(SCHEMA_TAMPERS))
def test_a_copy_with_another_definition_fails_verification_naming_it(
    schema_store: Store, schema_backup: dict[str, Any], tamper: str
) -> None:
    copy, target = restored_copy(schema_store, schema_backup["id"], tamper.replace(" ", "_")[:12])
    header = schema_store.repository().read_header(schema_backup["id"])
    source = schema_store.source()
    statements, expected = SCHEMA_TAMPERS[tamper]

    for statement in statements:
        http(schema_store.server, statement.format(copy=copy))
    verification = source.verify(header, target)

    assert verification.verdict is Verdict.MISMATCH, verification
    assert any(line.startswith(expected) for line in verification.differences), verification.differences


def test_an_untouched_copy_matches_with_its_definitions_compared(schema_store: Store, schema_backup: dict[str, Any]) -> None:
    _, target = restored_copy(schema_store, schema_backup["id"], "untouched")
    header = schema_store.repository().read_header(schema_backup["id"])

    verification = schema_store.source().verify(header, target)

    assert verification.verdict is Verdict.MATCH, verification.differences
    assert verification.checked["definitions"] == 5  # events, daily, feature_counts and its storage, audit_log


# ---- consistency: one instant for every table, or the manifest says it is not --------------------------


def slow_storage(seconds: float) -> Callable[[int], None]:
    """A progress callback that stalls the first export for ``seconds``, as a slow store would."""
    stalled: list[bool] = []

    def stall(_: int) -> None:
        if not stalled:
            stalled.append(True)
            time.sleep(seconds)

    return stall


def test_writes_during_the_backup_give_a_state_that_existed(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE TABLE {db}.a (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    client.execute(f"CREATE TABLE {db}.b (id UInt64) ENGINE = MergeTree ORDER BY id")
    for table in ("a", "b"):  # parts stay as written: this test is about the pin, the next about re-pins
        client.execute(f"SYSTEM STOP MERGES {db}.{table}")
    client.execute(f"INSERT INTO {db}.a SELECT number + 10000000, '{FILLER}' FROM system.numbers LIMIT 100000")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # every id goes into a, then into b: b is never ahead of a
        own = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
        try:
            while not stop.is_set():
                row = len(written)
                own.execute(f"INSERT INTO {db}.a (id, s) VALUES", [(row, "w")])
                own.execute(f"INSERT INTO {db}.b (id) VALUES", [(row,)])
                written.append(row)
                time.sleep(0.02)
        finally:
            own.disconnect()

    config = write_policy(
        tmp_path, host="127.0.0.1", port=clickhouse_server.tcp_port, http_port=clickhouse_server.http_port, database=db
    )
    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = clickhouse_settings(clickhouse_server, [db], parallel=1)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 5:
            time.sleep(0.01)
        result = run_backup(repository, SOURCE, settings, progress=slow_storage(1.5))
    finally:
        stop.set()
        thread.join()
    copy = f"{db}_copy"
    try:
        assert len(written) > 15, "the writer kept writing during the backup"
        source = ClickHouseSource(SOURCE, settings)
        options = RestoreOptions.of(
            to_host=clickhouse_server.host,
            to_port=clickhouse_server.tcp_port,
            to_http_port=clickhouse_server.http_port,
            to_database=copy,
        )
        restored = source.restore(repository, result.header, source.parse_target(options), options=options)
        assert restored.figures["verification"]["verdict"] == "match"
        a_ids = {row for (row,) in client.execute(f"SELECT id FROM {copy}.a WHERE id < 10000000")}
        b_ids = {row for (row,) in client.execute(f"SELECT id FROM {copy}.b")}
        window = result.header.meta.get("consistency", {})
        if window.get("moved"):  # reads of the parts never agreed: the manifest must say how far apart
            assert window["window_seconds"] > 0 and {record["table"] for record in window["moved"]} <= {f"{db}.a", f"{db}.b"}
        else:  # one instant: b holds no id a does not, and a at most the one id being written
            assert b_ids <= a_ids, f"b is ahead of a: {sorted(b_ids - a_ids)[:10]}"
            assert len(a_ids - b_ids) <= 1 and window["window_seconds"] < 1
        assert len(b_ids) < len(written), "the snapshot is of the instant of the pin, not of the end of the backup"

        shown = lifeboat(config, "snapshots", "show", result.header.id)
        assert shown.exit_code == 0 and f"consistency: {window['window_seconds']:.1f}s" in shown.stdout, shown.stdout
        shown_json = json.loads(lifeboat(config, "snapshots", "show", result.header.id, "--json").stdout)
        assert shown_json["consistency"] == window
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")
        repository.close()
        client.disconnect()


def test_a_consistency_window_over_the_policy_fails_the_backup_naming_the_table(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE TABLE {db}.t (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    for start in (0, 50000):
        client.execute(f"INSERT INTO {db}.t SELECT number + {start}, '{FILLER[:60]}' FROM system.numbers LIMIT 50000")
    stall = slow_storage(1.5)
    merged: list[bool] = []

    def merge_then_stall(size: int) -> None:  # t's pinned parts are merged away, and the export is slow
        if not merged:
            client.execute(f"OPTIMIZE TABLE {db}.t FINAL")
            merged.append(True)
        stall(size)

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = clickhouse_settings(clickhouse_server, [db], parallel=1, max_consistency_window="1s")
    try:
        with pytest.raises(SourceError) as failed:
            run_backup(repository, SOURCE, settings, progress=merge_then_stall)
        message = str(failed.value)
        assert "over max_consistency_window 1s" in message and "nothing was committed" in message, message
        assert f"{db}.t at " in message and "pinned again" in message, message
        assert repository.snapshot_ids(SOURCE) == []
    finally:
        repository.close()
        client.disconnect()


# ---- native strategy on the modern engine (chdb) --------------------------------------------------------


def chdb_fill(run: Callable[[str], Any], db: str) -> None:
    for statement in (
        f"CREATE DATABASE {db}",
        f"CREATE TABLE {db}.events (day Date, id UInt64, score Nullable(Decimal(10, 2)), tag LowCardinality(String))"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id",
        f"CREATE MATERIALIZED VIEW {db}.per_day ENGINE = SummingMergeTree ORDER BY day"
        f" AS SELECT day, count() AS n FROM {db}.events GROUP BY day",
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 61, number,"
        " if(number % 5 = 0, NULL, number / 3), concat('t', toString(number % 4)) FROM numbers(200000)",
        f"CREATE VIEW {db}.recent AS SELECT * FROM {db}.events WHERE day >= '2026-10-01'",
    ):
        run(statement)


def test_native_backup_incremental_restore_and_retention_on_chdb(chdb_session: Any, s3_server: Any, s3_bucket: str) -> None:
    db = f"native_{uuid.uuid4().hex[:8]}"
    executor = ChdbExecutor(chdb_session.session)
    chdb_fill(executor.execute, db)
    settings = ClickHouseSettings.model_validate(
        {"kind": "clickhouse", "host": "chdb", "databases": [db], "strategy": "auto"}
    )
    source = ClickHouseSource(SOURCE, settings, connect=lambda _endpoint: executor)
    repository = open_repository(
        RepositorySettings.model_validate(
            {
                "url": f"s3://{s3_bucket}/lifeboat",
                "s3": {"endpoint_url": s3_server.endpoint_url, "access_key_id": "testing", "secret_access_key": "testing"},
            }
        ),
        create=True,
    )

    def snapshot(previous: SnapshotHeader | None) -> SnapshotHeader:
        with repository.begin_snapshot(SOURCE, "clickhouse") as writer:
            outcome = source.snapshot(writer, previous)
            return writer.commit(fingerprint=outcome.fingerprint, census=outcome.census, meta=outcome.meta)

    try:
        full = snapshot(None)
        executor.execute(
            f"INSERT INTO {db}.events SELECT toDate('2026-11-01'), 1000000 + number, NULL, 'new' FROM numbers(500)"
        )
        incremental = snapshot(full)

        full_info, incremental_info = NativeBackupInfo.of(full), NativeBackupInfo.of(incremental)
        assert full.meta["strategy"] == "native" and full_info is not None and full_info.base is None
        assert incremental_info is not None and incremental_info.base == full_info.location
        assert incremental_info.chain == (full_info.location,) and incremental_info.base_snapshot == full.id
        keys = [
            obj["Key"] for obj in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="lifeboat/native/")["Contents"]
        ]
        assert f"lifeboat/{full_info.location}/.backup" in keys and f"lifeboat/{incremental_info.location}/.backup" in keys
        sizes = _prefix_sizes(s3_server.client(), s3_bucket, [full_info.location, incremental_info.location])
        assert sizes[1] < sizes[0] / 2, f"the incremental holds only what changed: {sizes}"

        target_db = f"{db}_restored"
        options = RestoreOptions.of(to_host="chdb", to_database=target_db)
        restored = source.restore(repository, incremental, source.parse_target(options), options=options)

        assert restored.figures["verification"]["verdict"] == "match", restored.figures
        for query in (
            "SELECT count(), sum(id), countIf(score IS NULL), sum(score) FROM {db}.events",
            "SELECT day, sum(n) FROM {db}.per_day GROUP BY day ORDER BY day",
            "SELECT count() FROM {db}.recent",
        ):
            assert executor.execute(query.format(db=target_db)) == executor.execute(query.format(db=db)), query
        executor.execute(f"INSERT INTO {target_db}.events VALUES ('2026-09-02', 7, 1.5, 'x')")
        assert source.verify(incremental, source.parse_target(options)).verdict is Verdict.MISMATCH

        stored = native_backup_locations(key.removeprefix("lifeboat/") for key in keys)
        assert deletable_native_backups(stored, [incremental]) == [], "the kept incremental needs its base"
        assert deletable_native_backups(stored, [full]) == [incremental_info.location]
    finally:
        for name in (db, f"{db}_restored"):
            executor.execute(f"DROP DATABASE IF EXISTS {name}")
        repository.close()


def _prefix_sizes(client: Any, bucket: str, locations: list[str]) -> list[int]:
    sizes = []
    for location in locations:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"lifeboat/{location}/")
        sizes.append(sum(obj["Size"] for obj in listed.get("Contents", [])))
    return sizes


def test_chdb_executor_answers_like_the_driver(chdb_session: Any) -> None:
    rows = ChdbExecutor(chdb_session.session).execute("SELECT toUInt64(18446744073709551615), 'a\\tb', [1, 2]")
    assert rows == [(18446744073709551615, "a\tb", [1, 2])]
    assert Endpoint("h", 1, 2, password="secret").describe() == "h:1"
