"""What a ClickHouse server holds: databases, tables, columns, active parts, and their fingerprints.

Everything here is SQL through a ``SqlExecutor`` (so it runs the same on clickhouse-driver and chdb)
and works on servers from 18.16 on. Tables come back as ``Table`` objects, which are also what a
snapshot's table entries carry (``Table.to_meta`` / ``Table.from_meta``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from backup.sources.clickhouse.client import SqlExecutor
from backup.sources.clickhouse.ddl import referenced_tables, view_query
from backup.sources.clickhouse.fingerprint import WHOLE_TABLE, Column, Definition, PartitionPrint, TableKey
from backup.sources.clickhouse.sql import (
    TableRole,
    classify,
    consumes_queue,
    database_selected,
    display_name,
    inner_table_owner,
    partitioned,
    qualified,
    quote_string,
    row_hash,
    table_selected,
)
from policies.errors import SourceError
from policies.model import ClickHouseSettings

log = structlog.get_logger(__name__)

# Columns an export leaves out: ALIAS ones are computed at read time, EPHEMERAL ones are never stored.
# MATERIALIZED columns are stored: their values were computed by the expression of the day they were
# written, so they are exported, hashed and restored as stored (SELECT * leaves them out).
_COMPUTED_KINDS = frozenset({"ALIAS", "EPHEMERAL"})


@dataclass(frozen=True)
class Part:
    """An active data part: its name, rows and modification time (seconds). Together they identify
    a part's content: part names restart when a table is dropped and created again."""

    name: str
    rows: int
    modified: int

    def to_json(self) -> list[Any]:
        return [self.name, self.rows, self.modified]

    @classmethod
    def from_json(cls, value: list[Any]) -> Part:
        return cls(str(value[0]), int(value[1]), int(value[2]))


PartSet = tuple[Part, ...]  # sorted by name


@dataclass(frozen=True)
class Table:
    database: str
    name: str
    engine: str
    create: str  # the CREATE statement as the server shows it
    partition_key: str
    columns: tuple[tuple[str, str], ...]  # (name, type) of the stored columns: SELECT * and MATERIALIZED ones
    role: TableRole
    reason: str = ""  # why definition only
    owner: str | None = None  # the materialized view whose storage this table is

    @property
    def key(self) -> TableKey:
        return self.database, self.name

    @property
    def display(self) -> str:
        return display_name(self.database, self.name)

    @property
    def sql(self) -> str:
        return qualified(self.database, self.name)

    @property
    def has_partitions(self) -> bool:
        return self.role is TableRole.DATA and partitioned(self.engine)

    @property
    def schema_id(self) -> str:
        """Changes whenever the definition or the exported columns change (ALTER ADD COLUMN keeps part
        names, so an unchanged part set alone does not prove an old export still fits)."""
        text = json.dumps([self.create, self.columns], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_meta(self) -> dict[str, Any]:
        return {
            "type": "table",
            "database": self.database,
            "table": self.name,
            "engine": self.engine,
            "create": self.create,
            "partition_key": self.partition_key,
            "columns": [list(column) for column in self.columns],
            "role": str(self.role),
            "reason": self.reason,
            "owner": self.owner,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Table:
        return cls(
            database=meta["database"],
            name=meta["table"],
            engine=meta["engine"],
            create=meta["create"],
            partition_key=meta.get("partition_key", ""),
            columns=tuple((str(name), str(kind)) for name, kind in meta.get("columns", [])),
            role=TableRole(meta["role"]),
            reason=meta.get("reason", ""),
            owner=meta.get("owner"),
        )


@dataclass(frozen=True)
class Catalog:
    version: str
    databases: tuple[str, ...]
    tables: tuple[Table, ...]


def held_back(tables: Iterable[Table]) -> dict[TableKey, str]:
    """Tables a restore does not recreate by itself, and why: queue consumers (a copy would take the
    source's messages), the views that read them (transitively) and those views' storage."""
    tables = list(tables)
    reasons = {
        table.key: f"engine {table.engine} would consume the source's queue"
        for table in tables
        if consumes_queue(table.engine)
    }
    databases = {table.database for table in tables}
    changed = True
    while changed:
        changed = False
        for table in tables:
            if table.key in reasons or table.role is not TableRole.VIEW:
                continue
            held = sorted(name for name in referenced_tables(table.create, databases) if (table.database, name) in reasons)
            if held:
                reasons[table.key] = f"reads {', '.join(held)}, which is held back"
                changed = True
    for table in tables:
        if table.owner is not None and (table.database, table.owner) in reasons:
            reasons[table.key] = f"storage of {table.owner}, which is held back"
    return reasons


def discover(sql: SqlExecutor, settings: ClickHouseSettings, *, where: str) -> Catalog:
    """The databases and tables ``settings`` select on the server behind ``sql``; raises SourceError
    when no database matches (naming the ones there)."""
    ((version,),) = sql.execute("SELECT version()")
    present = [str(row[0]) for row in sql.execute("SELECT name FROM system.databases")]
    databases = tuple(sorted(name for name in present if database_selected(name, settings.databases)))
    if not databases:
        raise SourceError(
            f"no database on {where} matches databases {settings.databases}; it has: {', '.join(sorted(present))}"
        )
    rows = _table_rows(sql, databases)
    columns = _columns(sql, databases)
    views_by_uuid = {uuid: name for _, name, engine, *_, uuid in rows if engine == "MaterializedView" and uuid}
    tables = []
    for database, name, engine, create, partition_key, _uuid in rows:
        owner = inner_table_owner(name, views_by_uuid)
        chosen_by = owner if owner is not None else name
        if not table_selected(database, chosen_by, settings.tables.include, settings.tables.exclude):
            continue
        role, reason = classify(engine)
        table_columns = columns.get((database, name), ())
        tables.append(Table(database, name, engine, create, partition_key, table_columns, role, reason, owner))
    log.info("clickhouse.discovered", where=where, version=version, databases=len(databases), tables=len(tables))
    return Catalog(str(version), databases, tuple(sorted(tables, key=lambda table: table.key)))


def _in_list(values: Iterable[str]) -> str:
    return ", ".join(quote_string(value) for value in values)


def _table_rows(sql: SqlExecutor, databases: tuple[str, ...]) -> list[tuple[str, str, str, str, str, str]]:
    has_uuid = bool(
        sql.execute("SELECT 1 FROM system.columns WHERE database = 'system' AND table = 'tables' AND name = 'uuid'")
    )
    uuid = "toString(uuid)" if has_uuid else "''"
    rows = sql.execute(
        f"SELECT database, name, engine, create_table_query, partition_key, {uuid} FROM system.tables "
        f"WHERE database IN ({_in_list(databases)}) AND NOT is_temporary"
    )
    return [(str(a), str(b), str(c), str(d), str(e), str(f)) for a, b, c, d, e, f in rows]


def _columns(sql: SqlExecutor, databases: tuple[str, ...]) -> dict[TableKey, tuple[tuple[str, str], ...]]:
    found: dict[TableKey, list[tuple[str, str]]] = {}
    rows = sql.execute(
        f"SELECT database, table, name, type, default_kind FROM system.columns WHERE database IN ({_in_list(databases)})"
    )
    for database, table, name, column_type, default_kind in rows:
        if str(default_kind) not in _COMPUTED_KINDS:
            found.setdefault((str(database), str(table)), []).append((str(name), str(column_type)))
    return {key: tuple(value) for key, value in found.items()}


def read_definitions(sql: SqlExecutor, databases: Iterable[str], only: Iterable[TableKey] | None = None) -> list[Definition]:
    """What defines every table, view, materialized view and dictionary of ``databases`` (of ``only``
    those, when given): system.tables and system.columns, as ``Definition`` objects."""
    listed = _in_list(databases)
    has_uuid = bool(
        sql.execute("SELECT 1 FROM system.columns WHERE database = 'system' AND table = 'tables' AND name = 'uuid'")
    )
    uuid = "toString(uuid)" if has_uuid else "''"
    rows = sql.execute(
        "SELECT database, name, engine, engine_full, partition_key, sorting_key, create_table_query, "
        f"{uuid} FROM system.tables WHERE database IN ({listed}) AND NOT is_temporary"
    )
    columns: dict[TableKey, list[Column]] = {}
    for database, table, name, kind, default, expression in sql.execute(
        "SELECT database, table, name, type, default_kind, default_expression FROM system.columns "
        f"WHERE database IN ({listed})"
    ):
        columns.setdefault((str(database), str(table)), []).append((str(name), str(kind), str(default), str(expression)))
    views_by_uuid = {str(row[7]): str(row[1]) for row in rows if row[2] == "MaterializedView" and row[7]}
    wanted = set(only) if only is not None else None
    found = []
    for database, name, engine, engine_full, partition_key, sorting_key, create, _ in rows:
        key = (str(database), str(name))
        if wanted is not None and key not in wanted:
            continue
        found.append(
            Definition(
                key[0],
                key[1],
                str(engine),
                tuple(columns.get(key, [])),
                str(engine_full),
                str(partition_key),
                str(sorting_key),
                view_query(str(create)),
                inner_table_owner(key[1], views_by_uuid),
            )
        )
    return found


def existing_tables(sql: SqlExecutor, databases: Iterable[str]) -> set[TableKey]:
    rows = sql.execute(f"SELECT database, name FROM system.tables WHERE database IN ({_in_list(databases)})")
    return {(str(database), str(name)) for database, name in rows}


def database_exists(sql: SqlExecutor, database: str) -> bool:
    return bool(sql.execute(f"SELECT 1 FROM system.databases WHERE name = {quote_string(database)}"))


# Settings of a session that change which CREATE statements the server accepts, or what they create:
# every ``allow_*`` the session turned on (experimental and suspicious types, codecs, engines) and
# ``flatten_nested`` (a Nested column stays one column, or becomes arrays). A setting that forbids
# something (allow_ddl = 0) is never needed to recreate a table, so only enabled ones count.
DDL_SETTINGS_QUERY = (
    "SELECT name, value FROM system.settings WHERE changed "
    "AND ((substring(name, 1, 6) = 'allow_' AND value NOT IN ('0', 'false')) OR name = 'flatten_nested') ORDER BY name"
)


def ddl_settings(sql: SqlExecutor) -> dict[str, str]:
    """The settings of this session (its user's profile) that its tables' CREATE statements may have
    needed, recorded with a snapshot so a restore sends them with each CREATE (DDL_SETTINGS_QUERY)."""
    return {str(name): str(value) for name, value in sql.execute(DDL_SETTINGS_QUERY)}


def known_settings(sql: SqlExecutor, names: Iterable[str]) -> dict[str, str]:
    """The current value of each of ``names`` this server has (a name it does not know is left out)."""
    wanted = list(names)
    if not wanted:
        return {}
    rows = sql.execute(f"SELECT name, value FROM system.settings WHERE name IN ({_in_list(wanted)})")
    return {str(name): str(value) for name, value in rows}


# ---- parts --------------------------------------------------------------------------------------


def active_parts(sql: SqlExecutor, databases: Iterable[str]) -> dict[TableKey, dict[str, PartSet]]:
    """Active parts of every MergeTree table in ``databases``, by table and partition id."""
    rows = sql.execute(
        "SELECT database, table, partition_id, name, rows, toUnixTimestamp(modification_time) FROM system.parts "
        f"WHERE active AND database IN ({_in_list(databases)})"
    )
    return _group_parts(rows)


PIN_READS = 10
"""Reads of system.parts that look for two in a row that agree (the pin), before the last one is taken."""


@dataclass(frozen=True)
class Pin:
    """The active parts of every table of a snapshot, as they all were at one instant ``at``.

    Two reads in a row that agree prove it: a part name is never used twice, so a table whose parts
    are the same in both held them from its first read to its second, which spans the moment
    between the two reads. When reads never agree (heavy writes), the last read is taken: its
    tables were read one after another between ``at`` and ``until``, and ``unsettled`` names those
    whose parts moved between the last two reads."""

    parts: dict[TableKey, dict[str, PartSet]]
    at: datetime
    until: datetime
    unsettled: tuple[TableKey, ...] = ()


def pin_parts(sql: SqlExecutor, databases: Iterable[str], *, reads: int = PIN_READS) -> Pin:
    """The active parts of every MergeTree table of ``databases`` at one instant (see ``Pin``): one
    query on system.parts for all the tables, repeated until two in a row agree."""
    databases = tuple(databases)
    started = _now()
    last = active_parts(sql, databases)
    ended = _now()
    moved: tuple[TableKey, ...] = ()
    for _ in range(reads - 1):
        again_started = _now()
        again = active_parts(sql, databases)
        if again == last:
            return Pin(last, ended, ended)
        moved = tuple(sorted(key for key in last.keys() | again.keys() if last.get(key) != again.get(key)))
        last, started, ended = again, again_started, _now()
    log.info("clickhouse.pin.unsettled", tables=len(moved), reads=reads)
    return Pin(last, started, ended, moved)


def _now() -> datetime:
    return datetime.now(UTC)


def table_parts(sql: SqlExecutor, table: Table) -> dict[str, PartSet]:
    rows = sql.execute(
        "SELECT database, table, partition_id, name, rows, toUnixTimestamp(modification_time) FROM system.parts "
        f"WHERE active AND database = {quote_string(table.database)} AND table = {quote_string(table.name)}"
    )
    return _group_parts(rows).get(table.key, {})


def tables_parts(sql: SqlExecutor, tables: Iterable[Table]) -> dict[TableKey, dict[str, PartSet]]:
    """The active parts of each of ``tables``, by table and partition id: one read of system.parts."""
    tables = list(tables)
    wanted = {table.key for table in tables}
    rows = sql.execute(
        "SELECT database, table, partition_id, name, rows, toUnixTimestamp(modification_time) FROM system.parts "
        f"WHERE active AND database IN ({_in_list(sorted({t.database for t in tables}))}) "
        f"AND table IN ({_in_list(sorted({t.name for t in tables}))})"
    )
    return {key: parts for key, parts in _group_parts(rows).items() if key in wanted}


def partition_parts(sql: SqlExecutor, table: Table, partition: str) -> PartSet:
    rows = sql.execute(
        "SELECT database, table, partition_id, name, rows, toUnixTimestamp(modification_time) FROM system.parts "
        f"WHERE active AND database = {quote_string(table.database)} AND table = {quote_string(table.name)} "
        f"AND partition_id = {quote_string(partition)}"
    )
    return _group_parts(rows).get(table.key, {}).get(partition, ())


def _group_parts(rows: Iterable[tuple[Any, ...]]) -> dict[TableKey, dict[str, PartSet]]:
    grouped: dict[TableKey, dict[str, list[Part]]] = {}
    for database, table, partition, name, count, modified in rows:
        grouped.setdefault((str(database), str(table)), {}).setdefault(str(partition), []).append(
            Part(str(name), int(count), int(modified))
        )
    return {
        key: {pid: tuple(sorted(parts, key=lambda part: part.name)) for pid, parts in partitions.items()}
        for key, partitions in grouped.items()
    }


def live_rows(sql: SqlExecutor, tables: Iterable[Table]) -> dict[TableKey, int]:
    """Rows of each data table now, for the drift check: the active parts' row counts of MergeTree
    tables (one read of system.parts, no table data touched), ``count()`` of the others (Log,
    Memory...). Tables that hold no data of their own (views, queues) are left out."""
    data = [table for table in tables if table.role is TableRole.DATA]
    merge_trees = [table for table in data if partitioned(table.engine)]
    counted: dict[TableKey, int] = {table.key: 0 for table in merge_trees}
    for database in sorted({table.database for table in merge_trees}):
        rows = sql.execute(
            f"SELECT table, sum(rows) FROM system.parts WHERE active AND database = {quote_string(database)} GROUP BY table"
        )
        for name, count in rows:
            if (database, str(name)) in counted:
                counted[(database, str(name))] = int(count)
    for table in data:
        if table.key not in counted:
            ((count,),) = sql.execute(f"SELECT count() FROM {table.sql}")
            counted[table.key] = int(count)
    return counted


def partition_bytes(sql: SqlExecutor, databases: Iterable[str]) -> dict[TableKey, dict[str, int]]:
    """Uncompressed bytes of the active parts of every partition of ``databases`` (for batching
    small partitions into one export; never part of a snapshot)."""
    rows = sql.execute(
        "SELECT database, table, partition_id, sum(data_uncompressed_bytes) FROM system.parts "
        f"WHERE active AND database IN ({_in_list(databases)}) GROUP BY database, table, partition_id"
    )
    sizes: dict[TableKey, dict[str, int]] = {}
    for database, table, partition, size in rows:
        sizes.setdefault((str(database), str(table)), {})[str(partition)] = int(size)
    return sizes


def batch_filter(partitions: Mapping[str, PartSet]) -> str:
    """A WHERE clause that reads exactly the ``parts`` of each of ``partitions``: what ``parts_filter``
    reads for each, in one query (a part's name is unique in its table and names its partition)."""
    names = _in_list(sorted(part.name for parts in partitions.values() for part in parts))
    return f"_part IN ({names})"


def parts_filter(parts: PartSet) -> str:
    """A WHERE clause that reads exactly ``parts`` of one partition (and nothing inserted since).

    The part names alone select those rows: a part's name is unique in its table and begins with its
    partition's id, and the server picks the parts to read by them. A ``_partition_id = ..`` beside
    them would select no other row, yet 18.16 evaluates it row by row (a tenth of an export's server
    CPU), and it never prunes parts there (alone, it reads the whole table)."""
    return f"_part IN ({_in_list(part.name for part in parts)})"


# ---- fingerprints -------------------------------------------------------------------------------


def print_where(sql: SqlExecutor, table_sql: str, columns: tuple[tuple[str, str], ...], where: str = "") -> PartitionPrint:
    """count() and sum(row hash) of the rows of ``table_sql`` that ``where`` selects."""
    condition = f" WHERE {where}" if where else ""
    ((rows, digest),) = sql.execute(f"SELECT count(), sum({row_hash(columns)}) FROM {table_sql}{condition}")
    return int(rows), int(digest)


def print_partitions(
    sql: SqlExecutor, table_sql: str, columns: tuple[tuple[str, str], ...], where: str
) -> dict[str, PartitionPrint]:
    """count() and sum(row hash) of each partition of the rows ``where`` selects, in one query: for
    each partition, what ``print_where`` gives for its own rows (the same aggregates, grouped)."""
    rows = sql.execute(
        f"SELECT _partition_id, count(), sum({row_hash(columns)}) FROM {table_sql} WHERE {where} GROUP BY _partition_id"
    )
    return {str(pid): (int(count), int(digest)) for pid, count, digest in rows}


def print_by_partition(
    sql: SqlExecutor, table_sql: str, columns: tuple[tuple[str, str], ...], *, partitions: bool
) -> dict[str, PartitionPrint]:
    """Every partition's print of ``table_sql`` (one pseudo partition ``""`` when not partitioned)."""
    if not partitions:
        return {WHOLE_TABLE: print_where(sql, table_sql, columns)}
    rows = sql.execute(f"SELECT _partition_id, count(), sum({row_hash(columns)}) FROM {table_sql} GROUP BY _partition_id")
    return {str(pid): (int(count), int(digest)) for pid, count, digest in rows}


Selection = tuple[str, tuple[tuple[str, str], ...], str]  # (table SQL, columns, WHERE clause)


def print_many(sql: SqlExecutor, selections: Sequence[Selection]) -> list[PartitionPrint]:
    """What ``print_where`` gives for each of ``selections`` (rows of several tables), in one query:
    the same aggregates, one ``SELECT`` per selection joined by ``UNION ALL``, in ``selections`` order."""
    if not selections:
        return []
    parts = [
        f"SELECT toUInt32({index}) AS i, count() AS rows, sum({row_hash(columns)}) AS hash FROM {table_sql} WHERE {where}"
        for index, (table_sql, columns, where) in enumerate(selections)
    ]
    found: dict[int, PartitionPrint] = {}
    for index, count, digest in sql.execute(" UNION ALL ".join(parts)):
        found[int(index)] = (int(count), int(digest))
    return [found[index] for index in range(len(selections))]


def print_tables(
    sql: SqlExecutor, tables: Sequence[tuple[str, tuple[tuple[str, str], ...], bool]]
) -> list[dict[str, PartitionPrint]]:
    """What ``print_by_partition`` gives for each of ``tables`` ((table SQL, columns, partitioned)), in
    one query (one ``SELECT`` per table joined by ``UNION ALL``), in ``tables`` order."""
    parts = []
    for index, (table_sql, columns, partitions) in enumerate(tables):
        aggregates = f"count() AS rows, sum({row_hash(columns)}) AS hash FROM {table_sql}"
        if partitions:
            parts.append(f"SELECT toUInt32({index}) AS i, _partition_id AS pid, {aggregates} GROUP BY _partition_id")
        else:
            parts.append(f"SELECT toUInt32({index}) AS i, '' AS pid, {aggregates}")
    found: list[dict[str, PartitionPrint]] = [{} for _ in tables]
    if parts:
        for index, pid, count, digest in sql.execute(" UNION ALL ".join(parts)):
            found[int(index)][str(pid)] = (int(count), int(digest))
    return found
