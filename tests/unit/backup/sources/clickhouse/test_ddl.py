"""CREATE statements rewritten for a restore into another database (clickhouse.ddl, pure)."""

from __future__ import annotations

import pytest

from backup.sources.clickhouse.ddl import creation_order, referenced_tables, rewrite_create, tokenize

SOURCE = ("features",)


def rewrite(ddl: str, target: str = "scratch", databases: tuple[str, ...] = SOURCE) -> str:
    return rewrite_create(ddl, databases=databases, target=target).sql


def test_tokens_join_back_to_the_statement_and_unescape_quoted_names() -> None:
    ddl = "CREATE TABLE f.`we\\`ird.na\\\\me` (s String DEFAULT 'it''s \\'x\\'') ENGINE = Log -- note\n"
    tokens = tokenize(ddl)
    assert "".join(token.text for token in tokens) == ddl
    quoted = [token for token in tokens if token.kind == "quoted"]
    assert [token.value for token in quoted] == ["we`ird.na\\me"]
    strings = [token.value for token in tokens if token.kind == "string"]
    assert strings == ["it's 'x'"]


def test_table_is_renamed_into_the_target_database() -> None:
    ddl = "CREATE TABLE features.events (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id"
    assert rewrite(ddl) == (
        "CREATE TABLE `scratch`.`events` (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id"
    )


def test_odd_quoted_names_survive_the_rename() -> None:
    ddl = "CREATE TABLE features.`odd name-ü \\` x` ( k UInt8) ENGINE = Log"
    assert rewrite(ddl, target="my-scratch") == "CREATE TABLE `my-scratch`.`odd name-ü \\` x` ( k UInt8) ENGINE = Log"


def test_quoted_source_database_and_unqualified_name() -> None:
    assert rewrite("CREATE TABLE `odd-db`.t (k UInt8) ENGINE = Memory", databases=("odd-db",)) == (
        "CREATE TABLE `scratch`.`t` (k UInt8) ENGINE = Memory"
    )
    assert rewrite("CREATE TABLE t (k UInt8) ENGINE = Memory") == "CREATE TABLE `scratch`.`t` (k UInt8) ENGINE = Memory"


@pytest.mark.parametrize("cluster", ["main", "'{cluster}'", "`my cluster`"])
def test_on_cluster_is_removed_and_reported(cluster: str) -> None:
    result = rewrite_create(
        f"CREATE TABLE IF NOT EXISTS features.events ON CLUSTER {cluster} (k UInt8) ENGINE = Log",
        databases=SOURCE,
        target="scratch",
    )
    assert "CLUSTER" not in result.sql
    assert result.sql.startswith("CREATE TABLE IF NOT EXISTS `scratch`.`events`")
    assert any("ON CLUSTER" in change for change in result.changes)


def test_uuid_clauses_are_removed_so_the_copy_gets_its_own() -> None:
    ddl = (
        "CREATE MATERIALIZED VIEW features.mv UUID '0d2ba62b-0a1d-4114-b5cc-77569d34b7d4' "
        "TO INNER UUID '49d0b310-a87a-4339-967b-b5bf54d7b996' (`d` Date) ENGINE = SummingMergeTree ORDER BY d "
        "AS SELECT d FROM features.e"
    )
    sql = rewrite(ddl)
    assert "UUID" not in sql
    assert "CREATE MATERIALIZED VIEW `scratch`.`mv`" in sql and "FROM `scratch`.e" in sql


def test_view_and_materialized_view_definitions_point_at_the_target() -> None:
    view = "CREATE VIEW features.daily ( day Date, n UInt64) AS SELECT day, count() AS n FROM features.events  GROUP BY day"
    assert rewrite(view).endswith("FROM `scratch`.events  GROUP BY day")
    mv = (
        "CREATE MATERIALIZED VIEW features.mv2 TO features.dst ( day Date) AS SELECT e.day FROM features.events AS e "
        "JOIN other.dim AS d ON e.k = d.k WHERE e.s != 'features.events'"
    )
    sql = rewrite(mv)
    assert "TO `scratch`.dst" in sql
    assert "FROM `scratch`.events AS e" in sql
    assert "JOIN other.dim" in sql, "a database that is not restored keeps its name"
    assert "'features.events'" in sql, "string literals are never rewritten"
    assert "e.day" in sql and "e.k = d.k" in sql


def test_every_restored_database_maps_to_the_target() -> None:
    sql = rewrite("CREATE VIEW a.v AS SELECT * FROM a.t JOIN b.u USING k", databases=("a", "b"))
    assert sql == "CREATE VIEW `scratch`.`v` AS SELECT * FROM `scratch`.t JOIN `scratch`.u USING k"


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("ReplicatedMergeTree('/clickhouse/tables/{shard}/features/events', '{replica}')", "MergeTree()"),
        ("ReplicatedReplacingMergeTree('/p/{shard}', '{replica}', version)", "ReplacingMergeTree(version)"),
        ("ReplicatedMergeTree('/p', 'r', day, (day, k), 8192)", "MergeTree(day, (day, k), 8192)"),
        ("ReplicatedSummingMergeTree", "SummingMergeTree"),
        ("ReplicatedCollapsingMergeTree(sign)", "CollapsingMergeTree(sign)"),
    ],
)
def test_replicated_engines_become_plain_ones(engine: str, expected: str) -> None:
    result = rewrite_create(f"CREATE TABLE features.t (k UInt8) ENGINE = {engine} ORDER BY k", databases=SOURCE, target="s")
    assert result.sql == f"CREATE TABLE `s`.`t` (k UInt8) ENGINE = {expected} ORDER BY k"
    assert any("does not join the source's replication" in change for change in result.changes)


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("Distributed(main, features, events, rand())", "Distributed(main, `scratch`, events, rand())"),
        ("Distributed('main', 'features', 'events')", "Distributed('main', 'scratch', 'events')"),
        ("Buffer(features, events, 16, 10, 100, 10000, 1000000, 10000000, 100000000)", "Buffer(`scratch`, events, 16, "),
        ("Merge(features, '^eve')", "Merge(`scratch`, '^eve')"),
        ("Merge(currentDatabase(), '^eve')", "Merge(currentDatabase(), '^eve')"),
        ("Distributed(main, other, events)", "Distributed(main, other, events)"),
    ],
)
def test_engines_pointing_at_a_database_follow_the_restore(engine: str, expected: str) -> None:
    assert expected in rewrite(f"CREATE TABLE features.t (k UInt8) ENGINE = {engine}")


def test_dictionary_source_database_is_rewritten() -> None:
    ddl = (
        "CREATE DICTIONARY features.dim (k UInt64, v String) PRIMARY KEY k "
        "SOURCE(CLICKHOUSE(HOST 'localhost' PORT 9000 USER 'default' DB 'features' TABLE 'dim_source')) "
        "LIFETIME(300) LAYOUT(HASHED())"
    )
    sql = rewrite(ddl)
    assert sql.startswith("CREATE DICTIONARY `scratch`.`dim`")
    assert "DB 'scratch' TABLE 'dim_source'" in sql


def test_populate_is_dropped_so_rows_are_not_loaded_twice() -> None:
    sql = rewrite("CREATE MATERIALIZED VIEW features.mv ENGINE = Log POPULATE AS SELECT * FROM features.e")
    assert "POPULATE" not in sql and "FROM `scratch`.e" in sql


def test_not_a_create_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="not a CREATE"):
        rewrite("DROP TABLE features.events")


def test_views_are_created_after_the_views_they_read() -> None:
    definitions = [
        ("a_top", "CREATE VIEW features.a_top AS SELECT * FROM features.m_middle"),
        ("m_middle", "CREATE VIEW features.m_middle AS SELECT * FROM z_base"),
        ("z_base", "CREATE VIEW features.z_base AS SELECT * FROM features.events"),
    ]
    assert creation_order(definitions, SOURCE) == ["z_base", "m_middle", "a_top"]
    assert referenced_tables(definitions[1][1], SOURCE) == {"z_base"}
