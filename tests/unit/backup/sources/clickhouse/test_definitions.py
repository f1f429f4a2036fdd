"""Definitions compared between a snapshot and a restored copy, and consistency windows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from backup.sources.base import consistency_summary
from backup.sources.clickhouse.consistency import merge_windows, window_document
from backup.sources.clickhouse.ddl import canonical, canonical_engine, view_query
from backup.sources.clickhouse.fingerprint import Definition, definition_differences, fingerprint_document

SOURCE = ("features",)


def table(**over: object) -> Definition:
    fields: dict[str, object] = {
        "database": "features",
        "table": "events",
        "engine": "MergeTree",
        "columns": (("day", "Date", "", ""), ("user", "String", "", ""), ("n", "UInt64", "MATERIALIZED", "length(user)")),
        "engine_full": "MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user) SETTINGS index_granularity = 8192",
        "partition_key": "toYYYYMM(day)",
        "sorting_key": "day, user",
    }
    fields.update(over)
    return Definition(**fields)  # type: ignore[arg-type]


def differences(want: list[Definition], got: list[Definition]) -> list[str]:
    return definition_differences([item.retargeted(SOURCE, "scratch") for item in want], [item.spelled() for item in got])


def copy_of(item: Definition, **over: object) -> Definition:
    fields = {**item.to_json(), "database": "scratch", **over}
    return Definition.from_json(fields)


def test_spelling_quotes_and_database_names_do_not_count() -> None:
    view = Definition(
        "features", "daily", "View", (("day", "Date", "", ""),), query="AS SELECT day FROM features.events  WHERE x = 1"
    )
    copied = copy_of(view, query="AS SELECT `day` FROM `scratch`.`events` WHERE x = 1")
    assert differences([table(), view], [copy_of(table()), copied]) == []


def test_each_difference_is_named() -> None:
    got = copy_of(
        table(),
        columns=[["day", "Date", "", ""], ["user", "FixedString(16)", "", ""], ["n", "UInt64", "MATERIALIZED", "1"]],
        sorting_key="user, day",
        engine_full="MergeTree PARTITION BY toYYYYMM(day) ORDER BY (user, day) SETTINGS index_granularity = 8192",
    )
    extra = copy_of(table(), table="extra")
    assert differences([table()], [got, extra]) == [
        "table events: column user: String in the snapshot, FixedString(16) in the copy",
        "table events: column n: MATERIALIZED length(user) in the snapshot, MATERIALIZED 1 in the copy",
        "table events: sorting key day, user in the snapshot, user, day in the copy",
        "table extra: in the copy, not in the snapshot",
    ]


def test_a_materialized_view_replaced_by_a_table_and_its_storage_matched_by_its_view() -> None:
    view = Definition("features", "counts", "MaterializedView", (), engine_full="SummingMergeTree ORDER BY k")
    storage = table(table=".inner.counts", owner="counts")
    renamed = copy_of(storage, table=".inner_id.0f3e")  # a newer server names it by the view's UUID
    assert differences([view, storage], [copy_of(view), renamed]) == []
    replaced = copy_of(table(), table="counts", engine="SummingMergeTree")
    assert differences([view, storage], [replaced]) == [
        "materialized view counts: a table (SummingMergeTree) in the copy",
        "storage of materialized view counts: in the snapshot, not in the copy",
    ]


def test_replicated_engines_and_buffers_are_compared_as_the_restore_writes_them() -> None:
    replicated = table(
        engine="ReplicatedMergeTree",
        engine_full="ReplicatedMergeTree('/clickhouse/{shard}/events', '{replica}') ORDER BY (day, user)",
    )
    restored = copy_of(table(), engine_full="MergeTree ORDER BY (day, user)")
    buffer = Definition("features", "buf", "Buffer", (), engine_full="Buffer(features, events, 16, 10, 100)")
    retargeted = copy_of(buffer, engine_full="Buffer(scratch, events, 16, 10, 100)")
    assert differences([replicated, buffer], [restored, retargeted]) == []
    assert differences([buffer], [copy_of(buffer)]) == [
        "table buf: engine Buffer(scratch, events, 16, 10, 100) in the snapshot, "
        "Buffer(features, events, 16, 10, 100) in the copy"
    ]


def test_a_view_query_is_what_follows_its_columns() -> None:
    mv = (
        "CREATE MATERIALIZED VIEW f.mv UUID '1a' TO INNER UUID '2b' (u String) ENGINE = SummingMergeTree ORDER BY u"
        " SETTINGS index_granularity = 8192 AS SELECT u, count() AS n FROM f.e  GROUP BY u"
    )
    assert view_query(mv) == "AS SELECT u, count() AS n FROM f.e GROUP BY u"
    assert view_query("CREATE MATERIALIZED VIEW f.mv TO f.t (a UInt8) AS SELECT 1 AS a") == "TO f.t AS SELECT 1 AS a"
    assert view_query("CREATE TABLE f.t (a UInt8) ENGINE = Log") == ""
    assert canonical("ORDER  BY (`day`,user)  -- c") == "ORDER BY (day, user)"
    assert canonical_engine("MergeTree() ORDER BY k") == canonical_engine("MergeTree ORDER BY k") == "MergeTree ORDER BY k"


def test_a_fingerprint_without_definitions_says_so() -> None:
    document = fingerprint_document([], server_version="18.16.1", strategy="logical", held_back={})
    assert "definitions" not in document
    recorded = fingerprint_document([], server_version="1", strategy="logical", held_back={}, definitions=[table()])
    assert recorded["definitions"][0]["table"] == "events"


def test_windows_of_shards_span_them_all() -> None:
    one = window_document(datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC), *[datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)] * 2, [])
    later = datetime(2026, 1, 1, 0, 0, 4, tzinfo=UTC)
    moved = [{"table": "f.a", "partitions": ["all"], "pinned": later.isoformat(), "why": "pinned again"}]
    two = window_document(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), later, moved)
    merged = merge_windows([one, two])
    assert merged is not None and merged["window_seconds"] == 4.0 and merged["moved"] == moved
    assert consistency_summary(one) == "0.0s (every table pinned at 2026-01-01T00:00:00+00:00)"
    summary = consistency_summary(merged)
    assert summary.startswith("4.0s from 2026-01-01T00:00:00+00:00 to 2026-01-01T00:00:04+00:00: f.a at ")
    assert merge_windows([]) is None
