"""ClickHouse plans: which partitions an incremental exports, how fingerprints compare, which native
backups retention may delete, which restore targets are refused (pure logic, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backup.repository.manifest import Entry, SnapshotHeader
from backup.sources.base import RestoreOptions, Verdict
from backup.sources.clickhouse import ClickHouseSource
from backup.sources.clickhouse_catalog import Part, Table, held_back
from backup.sources.clickhouse_chain import MAX_CHAIN, NativeBackupInfo, deletable_native_backups, native_backup_locations
from backup.sources.clickhouse_fingerprint import TablePrint, changed_fraction, compare
from backup.sources.clickhouse_logical import PartitionJob, data_entry_name, plan_exports, table_entry
from backup.sources.clickhouse_native import S3Destination, plan_native_backup
from backup.sources.clickhouse_restore import build_plan
from backup.sources.clickhouse_sql import TableRole, classify
from policies.errors import RestoreError
from policies.model import ClickHouseSettings

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
    return Entry(data_entry_name(source.database, source.name, partition), 10, "0" * 64, [("c" * 64, 10)], meta)


# ---- incremental plans ------------------------------------------------------------------------------


def test_unchanged_partitions_reuse_their_entries_and_changed_ones_are_exported() -> None:
    events, log = table("events"), table("audit", "Log")
    now = {
        events.key: {
            "202609": parts("202609_1_1_0"),
            "202610": parts("202610_2_2_0", "202610_5_5_0"),  # a part was added
            "202611": parts("202611_3_3_0"),
            "202612": parts("202612_6_6_0"),  # a new partition
        }
    }
    previous = {
        ("features", "events", "202609"): data_entry(events, "202609", parts("202609_1_1_0")),
        ("features", "events", "202610"): data_entry(events, "202610", parts("202610_2_2_0")),
        ("features", "events", "202611"): data_entry(events, "202611", parts("202611_3_3_0"), pinned=False),
    }
    plan = plan_exports([events, log, table("daily", "View")], now, previous)

    assert [entry.meta["partition"] for entry in plan.reused] == ["202609"]
    assert [(job.table.name, job.partition) for job in plan.jobs] == [
        ("events", "202610"),
        ("events", "202611"),  # its previous export was not pinned: never trusted again
        ("events", "202612"),
        ("audit", ""),  # a table without partitions is exported whole, every time
    ]


def test_a_changed_definition_or_recreated_parts_force_an_export() -> None:
    events = table("events")
    same_names = parts("202609_1_1_0")
    previous = {("features", "events", "202609"): data_entry(events, "202609", same_names, schema="before-alter")}
    assert plan_exports([events], {events.key: {"202609": same_names}}, previous).jobs

    recreated = (Part("202609_1_1_0", 100, 1_700_000_999),)  # same name, newer part: table dropped and created again
    previous = {("features", "events", "202609"): data_entry(events, "202609", same_names)}
    assert [job.partition for job in plan_exports([events], {events.key: {"202609": recreated}}, previous).jobs] == [
        "202609"
    ]


def test_partition_labels_name_table_and_partition() -> None:
    assert PartitionJob(table("events"), "202611").label == "features.events partition 202611"
    assert PartitionJob(table("odd name", "Log"), "").label == "features.`odd name`"


# ---- fingerprints -----------------------------------------------------------------------------------


def printed(name: str, partitions: dict[str, tuple[int, int]], *, unpinned: set[str] | None = None) -> TablePrint:
    return TablePrint("features", name, COLUMNS, True, None, dict(partitions), unpinned or set())


def test_equal_prints_match() -> None:
    expected = {("features", "events"): printed("events", {"202611": (1000, 5), "202610": (10, 6)})}
    result = compare(expected, dict(expected), shown={})
    assert (result.verdict, result.differences, result.partitions, result.rows) == (Verdict.MATCH, [], 2, 1010)


def test_differences_name_table_and_partition() -> None:
    expected = {
        ("features", "events"): printed("events", {"202611": (1000, 5), "202610": (10, 6), "202609": (3, 3)}),
        ("features", "users"): printed("users", {"all": (5, 1)}),
    }
    actual: dict[Any, TablePrint | str] = {
        ("features", "events"): printed("events", {"202611": (999, 4), "202610": (10, 7), "202612": (1, 1)}),
        ("features", "users"): "missing from scratch",
    }
    result = compare(expected, actual, shown={})
    assert result.verdict is Verdict.MISMATCH
    assert result.differences == [
        "features.events partition 202609: missing (snapshot has 3 rows)",
        "features.events partition 202610: count 10 equal, hash differs",
        "features.events partition 202611: count 1000 vs 999, hash differs",
        "features.events partition 202612: not in the snapshot (1 rows restored)",
        "features.users: missing from scratch",
    ]


def test_a_difference_in_an_unpinned_partition_is_unverified_not_a_pass() -> None:
    expected = {("features", "events"): printed("events", {"202611": (1000, 5)}, unpinned={"202611"})}
    actual: dict[Any, TablePrint | str] = {("features", "events"): printed("events", {"202611": (1001, 9)})}
    result = compare(expected, actual, shown={})
    assert result.verdict is Verdict.UNVERIFIED
    assert result.unverifiable == ["features.events partition 202611: count 1000 vs 1001, hash differs"]


def test_empty_partitions_compare_equal_to_absent_ones() -> None:
    expected = {("features", "log"): TablePrint("features", "log", COLUMNS, False, None, {"": (0, 0)})}
    actual: dict[Any, TablePrint | str] = {("features", "log"): TablePrint("features", "log", COLUMNS, False, None, {})}
    assert compare(expected, actual, shown={}).verdict is Verdict.MATCH


def test_appends_are_not_rewrites_for_the_anomaly_guard() -> None:
    before = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (300, 2)})}
    appended = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (350, 3), "202612": (5, 4)})}
    assert changed_fraction(before, appended) == 0.0
    rewritten = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (300, 9)})}
    assert changed_fraction(before, rewritten) == 0.75
    dropped = {("features", "events"): printed("events", {"202611": (300, 2)})}
    assert changed_fraction(before, dropped) == 0.25
    assert changed_fraction({}, appended) is None


# ---- native chains and retention --------------------------------------------------------------------


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


def test_incrementals_chain_until_max_chain_then_a_full_backup() -> None:
    headers = chain_of(MAX_CHAIN + 1)
    infos = [info for h in headers if (info := NativeBackupInfo.of(h))]
    assert len(infos) == MAX_CHAIN + 1
    assert infos[0].base is None
    assert infos[0].url == "http://minio:9000/backups/prod/native/features/features-20261101T000000Z-0000"
    assert infos[2].base == infos[1].location and infos[2].base_snapshot == headers[1].id
    assert infos[2].chain == (infos[1].location, infos[0].location)
    assert [len(info.chain) for info in infos] == [*range(MAX_CHAIN), 0], "a full backup after MAX_CHAIN"


def test_a_base_that_is_gone_or_elsewhere_means_a_full_backup() -> None:
    first = chain_of(1)[0]
    assert (
        plan_native_backup("features", "features-20261102T000000Z-aaaa", first, DESTINATION, base_exists=False).base is None
    )
    moved = S3Destination("http://minio:9000", "other-bucket", "prod")
    assert plan_native_backup("features", "features-20261102T000000Z-aaaa", first, moved, base_exists=True).base is None
    assert (
        plan_native_backup(
            "features", "features-20261102T000000Z-aaaa", header("x-20261101T000000Z-0000"), DESTINATION, base_exists=True
        ).base
        is None
    )


def test_retention_never_deletes_a_base_a_kept_incremental_needs() -> None:
    full, first, second = chain_of(3)
    locations = {info.location for h in (full, first, second) if (info := NativeBackupInfo.of(h))}
    orphan = "native/features/features-20261001T000000Z-dead"
    stored = locations | {orphan}

    assert deletable_native_backups(stored, [second]) == [orphan], "the newest incremental needs the whole chain"
    second_info = NativeBackupInfo.of(second)
    assert second_info is not None
    assert deletable_native_backups(stored, [first]) == sorted([orphan, second_info.location])
    assert deletable_native_backups(stored, [full, second]) == [orphan]
    assert deletable_native_backups(stored, [header("features-20261105T000000Z-1111")]) == sorted(stored)
    assert deletable_native_backups(stored, []) == sorted(stored)


def test_native_locations_come_from_object_keys() -> None:
    keys = [
        "native/features/features-20261101T000000Z-0000/.backup",
        "native/features/features-20261101T000000Z-0000/data/f/t/1_1_1_0/data.bin",
        "native/models/models-20261101T000000Z-0001/.lock",
        "native/broken",
        "chunks/ab/abcdef",
    ]
    assert native_backup_locations(keys) == {
        "native/features/features-20261101T000000Z-0000",
        "native/models/models-20261101T000000Z-0001",
    }


# ---- restore targets --------------------------------------------------------------------------------


def source() -> ClickHouseSource:
    settings = ClickHouseSettings.model_validate(
        {
            "kind": "clickhouse",
            "host": "ch-1.ml.svc",
            "port": 9000,
            "http_port": 8123,
            "databases": ["features"],
            "password": "pw",
        }
    )
    return ClickHouseSource("features", settings)


def test_target_options_are_parsed_with_the_source_credentials() -> None:
    target = source().parse_target(RestoreOptions(to_host="scratch-ch", to_database="drill", tables=("events",)))
    assert (target.endpoint.host, target.endpoint.port, target.endpoint.http_port) == ("scratch-ch", 9000, 8123)
    assert (target.database, target.tables, target.endpoint.password) == ("drill", ("events",), "pw")
    assert "pw" not in repr(target) and target.credentials == "user default with the source's password"
    drill = source().parse_target(
        RestoreOptions(to_host="scratch-ch", to_database="drill", to_user="drill", to_password="pw2")
    )
    assert (drill.endpoint.user, drill.endpoint.password) == ("drill", "pw2")
    assert drill.credentials == "user drill with the target's password"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            RestoreOptions(to_bucket="b", to_host="h", to_database="d"),
            "--to-bucket does not apply to a ClickHouse source; use --to-host",
        ),
        (RestoreOptions(to_data_dir="/x", in_place=True), "--to-data-dir, --in-place do not apply"),
        (RestoreOptions(to_host="h"), "needs --to-host and --to-database"),
        (RestoreOptions(to_database="d"), "needs --to-host and --to-database"),
    ],
)
def test_options_of_other_kinds_or_missing_ones_are_refused(options: RestoreOptions, message: str) -> None:
    with pytest.raises(RestoreError, match=message.replace("(", r"\(")):
        source().parse_target(options)


@pytest.mark.parametrize(
    ("host", "port", "database", "refused"),
    [
        ("ch-1.ml.svc", None, "features", True),
        ("CH-1.ml.svc", 9000, "features", True),
        ("ch-1.ml.svc", None, "scratch", False),
        ("scratch-ch", None, "features", False),
        ("ch-1.ml.svc", 19000, "features", False),  # another server on the same host (its HTTP port differs too)
    ],
)
def test_the_source_itself_is_never_a_target(host: str, port: int | None, database: str, refused: bool) -> None:
    options = RestoreOptions(to_host=host, to_port=port, to_http_port=18123 if port else None, to_database=database)
    if refused:
        with pytest.raises(RestoreError, match="that is the source itself"):
            source().parse_target(options)
    else:
        assert source().parse_target(options).database == database


def test_restore_plan_picks_tables_and_refuses_name_clashes() -> None:
    events, mv = table("events"), table("mv", "MaterializedView")
    storage = table(".inner.mv", "SummingMergeTree", owner="mv")
    entries = [table_entry(t) for t in (events, mv, storage)]
    entries.append(data_entry(events, "202611", parts("202611_1_1_0")))
    snapshot = header("features-20261101T000000Z-0000")

    plan = build_plan(snapshot, entries, ["mv"])
    assert [t.name for t in plan.tables] == ["mv", ".inner.mv"], "a view's storage goes with its view"
    assert [t.name for t in plan.view_storage] == [".inner.mv"]
    with pytest.raises(RestoreError, match=r"match no table.*features\.events"):
        build_plan(snapshot, entries, ["nothing*"])
    clash = [table_entry(table("events", database="other")), *entries]
    with pytest.raises(RestoreError, match=r"share a name.*events.*--tables 'db\.\*'"):
        build_plan(snapshot, clash, [])


def test_queue_consumers_and_what_reads_them_are_held_back() -> None:
    kafka = table("events_queue", "Kafka")
    mv = table(
        "events_mv",
        "MaterializedView",
        create="CREATE MATERIALIZED VIEW features.events_mv TO features.events AS SELECT * FROM features.events_queue",
    )
    daily = table("daily", "View", create="CREATE VIEW features.daily AS SELECT * FROM features.events")
    found = held_back([kafka, mv, daily, table("events")])
    assert set(found) == {("features", "events_queue"), ("features", "events_mv")}
    assert "consume" in found[("features", "events_queue")]
    assert table("x").role is TableRole.DATA
