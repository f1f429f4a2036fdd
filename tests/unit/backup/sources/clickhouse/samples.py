"""Tables, parts, entries and snapshot headers for the ClickHouse unit tests (pure: no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backup.repository.manifest import ChunkRef, Entry, SnapshotHeader
from backup.sources.clickhouse.catalog import Part, Table
from backup.sources.clickhouse.chain import NativeBackupInfo
from backup.sources.clickhouse.logical import data_entry_name
from backup.sources.clickhouse.native import S3Destination, plan_native_backup
from backup.sources.clickhouse.sql import classify

COLUMNS = (("day", "Date"), ("id", "UInt64"))
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def table(
    name: str, engine: str = "MergeTree", *, database: str = "features", owner: str | None = None, create: str = ""
) -> Table:
    role, reason = classify(engine)
    create = create or f"CREATE TABLE {database}.{name} (day Date, id UInt64) ENGINE = {engine}"
    return Table(database, name, engine, create, "toYYYYMM(day)", COLUMNS, role, reason, owner)


def parts(*names: str) -> tuple[Part, ...]:
    return tuple(Part(name, 100, 1_700_000_000) for name in sorted(names))


def data_entry(
    source: Table, partition: str, partset: tuple[Part, ...], *, pinned: bool = True, schema: str | None = None
) -> Entry:
    meta = {
        "type": "data",
        "database": source.database,
        "table": source.name,
        "partition": partition,
        "rows": 100,
        "hash": 7,
        "pinned": pinned,
        "schema": schema or source.schema_id,
        "parts": [part.to_json() for part in partset],
    }
    return Entry(data_entry_name(source.database, source.name, partition), 10, "0" * 64, [ChunkRef("c" * 64, 10)], meta)


def header(snapshot_id: str, *, native: NativeBackupInfo | None = None, at: datetime = T0) -> SnapshotHeader:
    meta = {"strategy": "native", "native": native.to_json()} if native else {"strategy": "logical"}
    return SnapshotHeader(snapshot_id, "features", "clickhouse", at, at, "good", "0.1.0", 0, 0, [], {}, {}, meta)


DESTINATION = S3Destination("http://minio:9000", "backups", "prod", "key", "secret")


def chain_of(count: int) -> list[SnapshotHeader]:
    """``count`` native snapshots, each planned on the previous one."""
    headers: list[SnapshotHeader] = []
    for number in range(count):
        snapshot_id = f"features-20261101T0{number}0000Z-000{number}"
        info = plan_native_backup("features", snapshot_id, headers[-1] if headers else None, DESTINATION, base_exists=True)
        headers.append(header(snapshot_id, native=info, at=T0 + timedelta(hours=number)))
    return headers
