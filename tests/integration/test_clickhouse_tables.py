"""A ClickHouse database of many small tables (issue 22, item 3) on the real 18.16 server.

Its tables are fingerprinted and checked in groups, yet each table's partitions are entries of their
own, restored (tables created in parallel) and verified; an incremental after one table changed
exports that table's changed partition only; a value changed in one table of many is named; and
the server answers far fewer queries than three per table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_setup import SOURCE, ClickHouseCase, OnFirstProgress, data_entries, http

from backup.jobs import run_backup
from backup.servers import ClickHouseProcess
from backup.sources.base import Verdict
from backup.sources.clickhouse.catalog import print_by_partition

pytestmark = pytest.mark.integration

TABLES = 60
COLUMNS = (("day", "Date"), ("id", "UInt64"), ("s", "String"), ("n", "Nullable(Int32)"), ("m", "UInt64"))
CONTENT = "SELECT count(), sum(id), sum(m), groupBitXor(cityHash64(s)), countIf(isNull(n)), sum(ifNull(n, 0)) FROM {}"


def table_name(number: int) -> str:
    return f"t{number:03d}"


class Tables(ClickHouseCase):
    def content(self, database: str) -> list[Any]:
        return [self.client.execute(CONTENT.format(f"{database}.{table_name(n)}")) for n in range(TABLES)]

    def queries(self) -> int:
        """Queries the server has answered so far (its ``Query`` event counter)."""
        ((count,),) = self.client.execute("SELECT value FROM system.events WHERE event = 'Query'")
        return int(count)


@pytest.fixture
def tables(clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path) -> Iterator[Tables]:
    """TABLES small tables of one or two monthly partitions each (Nullable and MATERIALIZED columns),
    a ReplacingMergeTree among them (its merges are stopped on restore), and a Log table."""
    db = clickhouse_database
    with Tables.opened(clickhouse_server, db, tmp_path, parallel=4) as case:
        for number in range(TABLES):
            engine = "ReplacingMergeTree" if number % 10 == 3 else "MergeTree"
            case.client.execute(
                f"CREATE TABLE {db}.{table_name(number)} (day Date, id UInt64, s String, n Nullable(Int32), "
                f"m UInt64 MATERIALIZED id * 3) ENGINE = {engine} PARTITION BY toYYYYMM(day) ORDER BY id"
            )
            case.client.execute(
                f"INSERT INTO {db}.{table_name(number)} (day, id, s, n) SELECT toDate('2026-01-01') + number % "
                f"{31 + number % 2 * 28}, number, toString(number), if(number % 5 = 0, NULL, toInt32(number)) "
                f"FROM system.numbers LIMIT {100 + number}"
            )
        case.client.execute(f"CREATE TABLE {db}.log (k UInt32) ENGINE = Log")
        http(clickhouse_server, f"INSERT INTO {db}.log VALUES (1), (2), (3)")
        yield case


def partitions_of(number: int) -> set[str]:
    return {"202601", "202602"} if number % 2 else {"202601"}


def test_many_tables_back_up_restore_in_parallel_verify_and_reuse_unchanged_ones(tables: Tables) -> None:
    db = tables.database
    first = run_backup(tables.repository, SOURCE, tables.settings)

    expected = {f"data/{db}/{table_name(n)}/{p}" for n in range(TABLES) for p in partitions_of(n)} | {f"data/{db}/log/-"}
    entries = data_entries(tables.repository, first.header)
    assert set(entries) == expected
    assert first.figures["partitions_exported"] == len(expected) - 1 and first.figures["whole_tables_exported"] == 1
    assert all(entry.meta["pinned"] is True for entry in entries.values())
    assert all(entry.meta["stored_rows"] == entry.meta["rows"] for entry in entries.values())
    # Each table's print is the one the server computes for it alone.
    printed = {doc["table"]: doc for doc in first.header.fingerprint["tables"]}
    for number in (0, 1, 13, TABLES - 1):
        name = table_name(number)
        alone = print_by_partition(tables.client, f"{db}.{name}", COLUMNS, partitions=True)
        assert {pid: tuple(value) for pid, value in printed[name]["partitions"].items()} == alone
        assert sum(rows for rows, _ in alone.values()) == 100 + number

    restored, _ = tables.restore(first.header, f"{db}_copy")

    assert restored.figures["verification"]["verdict"] == "match"
    assert restored.figures["tables"] == TABLES + 1
    assert tables.content(f"{db}_copy") == tables.content(db)
    assert tables.client.execute(f"SELECT sum(k) FROM {db}_copy.log") == [(6,)]

    # One table changes in one partition: only that partition is exported again.
    http(tables.server, f"INSERT INTO {db}.{table_name(7)} (day, id, s, n) VALUES ('2026-02-03', 900001, 'new', 1)")
    second = run_backup(tables.repository, SOURCE, tables.settings)

    assert second.figures["partitions_exported"] == 1
    assert second.figures["partitions_reused"] == len(expected) - 2
    assert sorted(second.figures["exported"]) == [f"{db}.log", f"{db}.{table_name(7)} partition 202602"]
    again = data_entries(tables.repository, second.header)
    assert set(again) == expected
    # The content of every other partition is the same chunks (the Log table's, exported again, packed again)
    changed = {
        name for name in expected if [ref.id for ref in again[name].chunks] != [ref.id for ref in entries[name].chunks]
    }
    assert changed == {f"data/{db}/{table_name(7)}/202602"}
    restored, _ = tables.restore(second.header, f"{db}_copy2")
    assert restored.figures["verification"]["verdict"] == "match"
    assert tables.content(f"{db}_copy2") == tables.content(db)


def test_a_value_changed_in_one_table_of_many_is_named_by_verify(tables: Tables) -> None:
    db, copy = tables.database, f"{tables.database}_tampered"
    result = run_backup(tables.repository, SOURCE, tables.settings)
    _, target = tables.restore(result.header, copy)
    assert tables.source.verify(result.header, target).verdict is Verdict.MATCH

    # One stored value (the MATERIALIZED m of one row) changes in one table: same rows, same count.
    name = table_name(41)
    tables.client.execute(f"ALTER TABLE {copy}.{name} DROP PARTITION 202602")
    http(
        tables.server,
        f"INSERT INTO {copy}.{name} (day, id, s, n, m) SELECT day, id, s, n, if(id = 42, m + 1, m) FROM {db}.{name}"
        " WHERE toYYYYMM(day) = 202602",
        insert_allow_materialized_columns="1",
    )
    assert tables.content(copy)[41][0][:2] == tables.content(db)[41][0][:2]
    ((february,),) = tables.client.execute(f"SELECT count() FROM {db}.{name} WHERE toYYYYMM(day) = 202602")

    verification = tables.source.verify(result.header, target)

    assert verification.verdict is Verdict.MISMATCH
    assert verification.differences == [f"{db}.{name} partition 202602: count {february} equal, hash differs"]


def test_a_backup_and_a_restore_of_many_tables_cost_the_server_fewer_queries_than_tables_times_three(
    tables: Tables,
) -> None:
    before = tables.queries()
    result = run_backup(tables.repository, SOURCE, tables.settings)
    backup_queries = tables.queries() - before - 1
    before = tables.queries()
    restored, _ = tables.restore(result.header, f"{tables.database}_copy")
    restore_queries = tables.queries() - before - 1

    exports = result.figures["partitions_exported"] + result.figures["whole_tables_exported"]
    assert restored.figures["verification"]["verdict"] == "match"
    # One export and one insert per partition cannot be avoided; fingerprints and checks are grouped.
    assert backup_queries < exports + TABLES // 2, f"{backup_queries} queries for {exports} exports"
    assert restore_queries < exports + TABLES + TABLES // 2, f"{restore_queries} queries for {exports} inserts"


def test_a_table_merged_during_its_group_is_pinned_again_and_exported_alone(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    with ClickHouseCase.opened(clickhouse_server, db, tmp_path, parallel=1) as case:
        client = case.client
        for number in range(5):
            name = f"{db}.{table_name(number)}"
            client.execute(f"CREATE TABLE {name} (k UInt64) ENGINE = MergeTree PARTITION BY tuple() ORDER BY k")
            for first in (0, 1000):  # two parts each
                client.execute(f"INSERT INTO {name} SELECT {first} + number FROM system.numbers LIMIT 100")
        # At the first progress report the group's first table is being stored: the last one's parts merge away.
        merge = OnFirstProgress(client, f"OPTIMIZE TABLE {db}.{table_name(4)} FINAL")
        result = run_backup(case.repository, SOURCE, case.settings, progress=merge)

        assert merge.ran and result.figures["partitions_exported"] == 5
        assert result.figures["retries"] == 1 and result.figures["unpinned"] == 0
        [moved] = result.header.meta["consistency"]["moved"]
        assert moved["table"] == f"{db}.{table_name(4)}" and "pinned again" in moved["why"]
        stored = case.repository.entries(result.header)
        entries = {entry.meta["table"]: entry for entry in stored if "partition" in entry.meta}
        assert len(entries[table_name(4)].meta["parts"]) == 1 and entries[table_name(4)].meta["stored_rows"] == 200
        assert {len(entries[table_name(n)].meta["parts"]) for n in range(4)} == {2}
        restored, _ = case.restore(result.header, f"{db}_copy")
        assert restored.figures["verification"]["verdict"] == "match"
        for number in range(5):
            assert client.execute(f"SELECT count(), uniqExact(k) FROM {db}_copy.{table_name(number)}") == [(200, 200)]
