"""A ClickHouse table of many small partitions (issue 22, item 3) on the real 18.16 server.

Its partitions are exported and fingerprinted in batches, yet the snapshot is what per-partition
exports made: one entry per partition (same names, same meta), each restored and verified; an
incremental reuses every unchanged partition; a value changed in one partition of hundreds is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_setup import SOURCE, ClickHouseCase, OnFirstProgress, data_entries, http

from backup.jobs import run_backup
from backup.servers import ClickHouseProcess
from backup.sources.base import Verdict
from backup.sources.clickhouse.catalog import print_by_partition

pytestmark = pytest.mark.integration

PARTITIONS = 300
ROWS = 30_000
COLUMNS = (("p", "UInt16"), ("id", "UInt64"), ("s", "String"), ("n", "Nullable(Int32)"), ("m", "UInt64"))
DATA_META = {"type", "database", "table", "partition", "format", "rows", "hash", "stored_rows", "pinned", "schema", "parts"}
BY_PARTITION = (
    "SELECT p, count(), sum(id), sum(m), groupBitXor(cityHash64(s)), countIf(isNull(n)), sum(ifNull(n, 0))"
    " FROM {db}.events GROUP BY p ORDER BY p"
)


@pytest.fixture
def many(clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path) -> Iterator[ClickHouseCase]:
    """A table of PARTITIONS partitions (some of two parts), with Nullable and MATERIALIZED columns."""
    db = clickhouse_database
    with ClickHouseCase.opened(clickhouse_server, db, tmp_path, parallel=2) as case:
        case.client.execute(
            f"CREATE TABLE {db}.events (p UInt16, id UInt64, s String, n Nullable(Int32), m UInt64 MATERIALIZED id * 3)"
            " ENGINE = MergeTree PARTITION BY p ORDER BY id"
        )
        case.client.execute(
            f"INSERT INTO {db}.events (p, id, s, n) SELECT number % {PARTITIONS}, number, toString(number),"
            f" if(number % 5 = 0, NULL, toInt32(number)) FROM system.numbers LIMIT {ROWS}"
        )
        case.client.execute(
            f"INSERT INTO {db}.events (p, id, s, n) SELECT number % 40, {ROWS} + number, 'second part', NULL"
            " FROM system.numbers LIMIT 400"
        )
        yield case


def test_hundreds_of_partitions_back_up_restore_verify_and_reuse_unchanged_ones(many: ClickHouseCase) -> None:
    db = many.database
    first = run_backup(many.repository, SOURCE, many.settings)

    assert first.figures["partitions_exported"] == PARTITIONS and first.figures["partitions_reused"] == 0
    entries = data_entries(many.repository, first.header)
    # One entry per partition, named and described as a per-partition export names and describes it.
    assert set(entries) == {f"data/{db}/events/{p}" for p in range(PARTITIONS)}
    by_id = {entry.meta["partition"]: entry for entry in entries.values()}
    assert all(set(entry.meta) == DATA_META for entry in by_id.values())
    assert all(entry.meta["pinned"] is True for entry in by_id.values())
    assert all(entry.meta["stored_rows"] == entry.meta["rows"] for entry in by_id.values())
    assert [by_id[str(p)].meta["rows"] for p in (0, 39, 40, 299)] == [110, 110, 100, 100]
    assert {len(by_id[str(p)].meta["parts"]) for p in range(40)} == {2}
    # Each partition's print is the one the server computes for it alone.
    server_prints = print_by_partition(many.client, f"{db}.events", COLUMNS, partitions=True)
    [printed] = first.header.fingerprint["tables"]
    assert {pid: tuple(value) for pid, value in printed["partitions"].items()} == server_prints
    assert {pid: (entry.meta["rows"], entry.meta["hash"]) for pid, entry in by_id.items()} == server_prints

    restored, _ = many.restore(first.header, f"{db}_copy")
    assert restored.figures["verification"]["verdict"] == "match"
    assert many.client.execute(BY_PARTITION.format(db=f"{db}_copy")) == many.client.execute(BY_PARTITION.format(db=db))

    # Two partitions change; the other 298 are reused without being read.
    http(many.server, f"INSERT INTO {db}.events (p, id, s, n) VALUES (7, 900001, 'new', 1), (123, 900002, 'new', NULL)")
    second = run_backup(many.repository, SOURCE, many.settings)

    assert (second.figures["partitions_exported"], second.figures["partitions_reused"]) == (2, PARTITIONS - 2)
    assert sorted(second.figures["exported"]) == [f"{db}.events partition 123", f"{db}.events partition 7"]
    again = data_entries(many.repository, second.header)
    assert set(again) == set(entries)
    changed = {name for name in entries if again[name].chunks != entries[name].chunks}
    assert changed == {f"data/{db}/events/7", f"data/{db}/events/123"}
    restored, _ = many.restore(second.header, f"{db}_copy2")
    assert restored.figures["verification"]["verdict"] == "match"
    assert many.client.execute(BY_PARTITION.format(db=f"{db}_copy2")) == many.client.execute(BY_PARTITION.format(db=db))


def test_a_value_changed_in_one_partition_of_hundreds_is_named_by_verify(many: ClickHouseCase) -> None:
    db, copy = many.database, f"{many.database}_tampered"
    result = run_backup(many.repository, SOURCE, many.settings)
    _, target = many.restore(result.header, copy)
    assert many.source.verify(result.header, target).verdict is Verdict.MATCH

    # One stored value (the MATERIALIZED m of one row) changes in partition 42: same rows, same count.
    many.client.execute(f"ALTER TABLE {copy}.events DROP PARTITION 42")
    http(
        many.server,
        f"INSERT INTO {copy}.events (p, id, s, n, m) SELECT p, id, s, n, if(id = 4242, m + 1, m) FROM {db}.events"
        " WHERE p = 42",
        insert_allow_materialized_columns="1",
    )
    assert many.client.execute(f"SELECT count(), sum(id) FROM {copy}.events") == many.client.execute(
        f"SELECT count(), sum(id) FROM {db}.events"
    )

    verification = many.source.verify(result.header, target)

    assert verification.verdict is Verdict.MISMATCH
    assert verification.differences == [f"{db}.events partition 42: count 100 equal, hash differs"]


def test_a_partition_merged_during_its_batch_is_pinned_again_and_exported_alone(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db = clickhouse_database
    with ClickHouseCase.opened(clickhouse_server, db, tmp_path, parallel=1) as case:
        client = case.client
        client.execute(f"CREATE TABLE {db}.t (p UInt8, k UInt64) ENGINE = MergeTree PARTITION BY p ORDER BY k")
        client.execute(f"INSERT INTO {db}.t SELECT number % 20, number FROM system.numbers LIMIT 2000")
        client.execute(f"INSERT INTO {db}.t SELECT 5, 10000 + number FROM system.numbers LIMIT 100")  # partition 5: 2 parts
        # At the first progress report the batch has been read, its parts not yet checked: 5's are merged away.
        merge = OnFirstProgress(client, f"OPTIMIZE TABLE {db}.t PARTITION 5 FINAL")
        result = run_backup(case.repository, SOURCE, case.settings, progress=merge)

        assert merge.ran and result.figures["partitions_exported"] == 20
        assert result.figures["retries"] == 1 and result.figures["unpinned"] == 0
        [moved] = result.header.meta["consistency"]["moved"]
        assert moved["partitions"] == ["5"] and "pinned again" in moved["why"]
        [entry] = [entry for entry in case.repository.entries(result.header) if entry.meta.get("partition") == "5"]
        assert len(entry.meta["parts"]) == 1 and entry.meta["stored_rows"] == 200  # the merged part
        restored, _ = case.restore(result.header, f"{db}_copy")
        assert restored.figures["verification"]["verdict"] == "match"
        assert client.execute(f"SELECT count(), uniqExact(k) FROM {db}_copy.t") == [(2100, 2100)]
