"""Which databases and tables a ClickHouse source takes, what it does with each engine, how rows are
hashed and which strategy it picks (clickhouse.sql, pure)."""

from __future__ import annotations

import pytest

from backup.sources.clickhouse.sql import (
    TableRole,
    choose_strategy,
    classify,
    column_hash_args,
    consumes_queue,
    database_selected,
    display_name,
    glob_matches,
    inner_table_owner,
    merging,
    parse_version,
    quote_ident,
    quote_string,
    row_hash,
    table_selected,
)
from policies.errors import SourceError


@pytest.mark.parametrize(
    ("glob", "database", "table", "expected"),
    [
        ("features.*", "features", "events", True),
        ("features.*", "features_old", "events", False),
        ("*.events_*", "features", "events_daily", True),
        ("events", "features", "events", True),  # a glob without a dot also matches the bare table name
        ("events", "features", "events_2", False),
        ("f*.odd name-*", "features", "odd name-ü", True),
        ("a.b.c", "a.b", "c", True),  # dots inside names: the whole db.table string is matched
    ],
)
def test_glob_matches_db_dot_table(glob: str, database: str, table: str, expected: bool) -> None:
    assert glob_matches(glob, database, table) is expected


def test_system_databases_need_their_exact_name() -> None:
    assert database_selected("features", ["feat*"])
    assert not database_selected("system", ["*"])
    assert not database_selected("INFORMATION_SCHEMA", ["*"])
    assert database_selected("system", ["system"])


def test_table_include_then_exclude() -> None:
    include, exclude = ["features.*"], ["*.tmp_*", "features.scratch"]
    assert table_selected("features", "events", include, exclude)
    assert not table_selected("features", "tmp_load", include, exclude)
    assert not table_selected("features", "scratch", include, exclude)
    assert not table_selected("other", "events", include, exclude)


@pytest.mark.parametrize(
    ("engine", "role"),
    [
        ("MergeTree", TableRole.DATA),
        ("ReplicatedReplacingMergeTree", TableRole.DATA),
        ("Log", TableRole.DATA),
        ("Memory", TableRole.DATA),
        ("View", TableRole.VIEW),
        ("MaterializedView", TableRole.VIEW),
        ("Dictionary", TableRole.VIEW),
        ("Distributed", TableRole.SCHEMA),
        ("Merge", TableRole.SCHEMA),
        ("Buffer", TableRole.SCHEMA),
        ("Kafka", TableRole.SCHEMA),
        ("URL", TableRole.SCHEMA),
        ("Null", TableRole.SCHEMA),
        ("Set", TableRole.SCHEMA),
    ],
)
def test_engines_are_classified(engine: str, role: TableRole) -> None:
    found, reason = classify(engine)
    assert found is role
    assert (reason == "") is (role is TableRole.DATA)
    if role is TableRole.SCHEMA:
        assert engine in reason and "definition only" in reason


def test_engine_properties() -> None:
    assert merging("ReplacingMergeTree") and merging("ReplicatedSummingMergeTree")
    assert not merging("MergeTree") and not merging("ReplicatedMergeTree")
    assert consumes_queue("Kafka") and consumes_queue("RabbitMQ") and not consumes_queue("Distributed")


def test_materialized_view_storage_belongs_to_its_view() -> None:
    views = {"49d0b310-a87a-4339-967b-b5bf54d7b996": "mv_new"}
    assert inner_table_owner(".inner.mv", views) == "mv"
    assert inner_table_owner(".inner_id.49d0b310-a87a-4339-967b-b5bf54d7b996", views) == "mv_new"
    assert inner_table_owner(".inner_id.00000000-0000-0000-0000-000000000000", views) is None
    assert inner_table_owner("events", views) is None


def test_quoting() -> None:
    assert quote_ident("odd name-`x`\\") == "`odd name-\\`x\\`\\\\`"
    assert quote_string("it's a \\ path") == "'it\\'s a \\\\ path'"
    assert display_name("features", "events") == "features.events"
    assert display_name("features", "odd name") == "features.`odd name`"


@pytest.mark.parametrize(
    ("column_type", "expected"),
    [
        ("UInt64", ["`c`"]),
        ("String", ["`c`"]),
        ("FixedString(4)", ["`c`"]),
        ("DateTime('Europe/Berlin')", ["`c`"]),
        ("Enum8('a' = 1, 'b(' = 2)", ["`c`"]),
        ("Array(Array(String))", ["`c`"]),
        ("Nullable(Int64)", ["isNull(`c`)", "assumeNotNull(`c`)"]),
        ("Nullable(Decimal(18, 4))", ["isNull(`c`)", "toString(assumeNotNull(`c`))"]),
        ("Decimal(18, 4)", ["toString(`c`)"]),
        ("UUID", ["toString(`c`)"]),
        ("Array(Nullable(String))", ["toString(`c`)"]),
        ("Tuple(UInt8, String)", ["toString(`c`)"]),
        ("LowCardinality(String)", ["toString(`c`)"]),
        ("LowCardinality(Nullable(String))", ["isNull(`c`)", "ifNull(toString(`c`), '')"]),
        ("AggregateFunction(uniq, UInt64)", ["ifNull(toString(finalizeAggregation(`c`)), '')"]),
    ],
)
def test_every_column_type_gets_hashable_arguments(column_type: str, expected: list[str]) -> None:
    """18.16's cityHash64 refuses Nullable, Decimal, UUID, LowCardinality; newer servers return NULL
    for a NULL (which sum() would skip): every column must still change the row's hash."""
    assert column_hash_args("`c`", column_type) == expected


def test_row_hash_covers_all_columns_in_order() -> None:
    assert row_hash([("id", "UInt32"), ("n", "Nullable(Int8)")]) == "cityHash64(`id`, isNull(`n`), assumeNotNull(`n`))"
    with pytest.raises(ValueError):
        row_hash([])


def test_versions() -> None:
    assert parse_version("18.16.1") == (18, 16, 1)
    assert parse_version("26.9.2.1") == (26, 9, 2, 1)
    assert parse_version("24.3.1.2672-lts") == (24, 3, 1, 2672)
    with pytest.raises(ValueError):
        parse_version("unknown")


@pytest.mark.parametrize(
    ("configured", "version", "s3", "expected"),
    [
        ("auto", (18, 16, 1), True, "logical"),
        ("auto", (24, 8, 1), False, "logical"),
        ("auto", (24, 8, 1), True, "native"),
        ("auto", (22, 8), True, "native"),
        ("auto", (22, 7), True, "logical"),
        ("logical", (24, 8, 1), True, "logical"),
        ("native", (24, 8, 1), True, "native"),
    ],
)
def test_strategy_choice(configured: str, version: tuple[int, ...], s3: bool, expected: str) -> None:
    assert choose_strategy(configured, version, s3).strategy == expected


def test_native_that_cannot_work_says_why() -> None:
    with pytest.raises(SourceError, match=r"18\.16\.1.*strategy: logical"):
        choose_strategy("native", (18, 16, 1), True)
    with pytest.raises(SourceError, match="s3:// repository"):
        choose_strategy("native", (24, 8), False)
