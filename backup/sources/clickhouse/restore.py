"""Restoring a ClickHouse snapshot into a database of a (scratch) server, and verifying it.

Order: tables holding data are created (definitions rewritten into the target database, see
ddl) and loaded (logical: INSERT .. FORMAT Native over HTTP; native: the server's
RESTORE), then definition-only tables, then views in dependency order, then the storage of
materialized views (loaded through the view, after it exists, so nothing is counted twice). Tables of
merging engines keep their merges stopped so the rows stay as backed up until verified. Last, the
target is fingerprinted and compared with the snapshot.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from backup.repository.manifest import Entry, SnapshotHeader
from backup.sources.clickhouse.catalog import (
    Table,
    database_exists,
    existing_tables,
    known_settings,
)
from backup.sources.clickhouse.client import ClickHouseError, SqlExecutor, run_parallel
from backup.sources.clickhouse.ddl import RewrittenDdl, creation_order, rewrite_create, uses_low_cardinality
from backup.sources.clickhouse.fingerprint import (
    TableKey,
    TablePrint,
    held_back_tables,
    table_prints,
)
from backup.sources.clickhouse.sql import (
    TableRole,
    display_name,
    glob_matches,
    merging,
    qualified,
    quote_ident,
)
from backup.sources.clickhouse.targets import ClickHouseTarget
from policies.errors import RestoreError
from policies.sizes import human_bytes

log = structlog.get_logger(__name__)

_PARTITION_LINES = 24  # per table in a plan; the rest is summed up
LOW_CARDINALITY_SETTING = "allow_experimental_low_cardinality_type"  # 18.x-19.x; later servers dropped it


# ---- the plan (pure) ------------------------------------------------------------------------------


@dataclass
class RestorePlan:
    """What a restore brings back, from the snapshot's entries and the --tables globs."""

    strategy: str
    databases: tuple[str, ...]  # the snapshot's source databases
    tables: list[Table]  # chosen and restorable, in snapshot order
    entries: dict[TableKey, list[Entry]]  # data entries by table (logical strategy)
    prints: dict[TableKey, TablePrint]
    held_back: dict[TableKey, str] = field(default_factory=dict)  # chosen but not recreated, and why
    ddl_settings: dict[str, str] = field(default_factory=dict)  # recorded at backup from the source's session

    @property
    def wanted_settings(self) -> dict[str, str]:
        """Settings the CREATEs may need: those recorded at backup, and the LowCardinality one when a
        definition uses the type (the source's profile may have allowed it without the session
        changing anything, and the target's profile may not)."""
        wanted = dict(self.ddl_settings)
        if any(uses_low_cardinality(table.create) for table in self.tables):
            wanted.setdefault(LOW_CARDINALITY_SETTING, "1")
        return wanted

    @property
    def data_tables(self) -> list[Table]:
        return [table for table in self.tables if table.role is TableRole.DATA and table.owner is None]

    @property
    def view_storage(self) -> list[Table]:
        return [table for table in self.tables if table.role is TableRole.DATA and table.owner is not None]

    @property
    def definitions(self) -> list[Table]:
        return [table for table in self.tables if table.role is TableRole.SCHEMA]

    @property
    def views(self) -> list[Table]:
        views = {table.name: table for table in self.tables if table.role is TableRole.VIEW}
        return [views[name] for name in creation_order(((t.name, t.create) for t in views.values()), self.databases)]

    def rows(self, table: Table) -> int:
        found = self.prints.get(table.key)
        return found.rows if found else 0

    def size(self, table: Table) -> int:
        return sum(entry.size for entry in self.entries.get(table.key, []))


def chosen(table: Table, globs: Sequence[str]) -> bool:
    """Whether ``--tables`` globs pick ``table`` (a view's storage goes with its view)."""
    return not globs or any(glob_matches(glob, table.database, table.owner or table.name) for glob in globs)


def build_plan(header: SnapshotHeader, entries: Iterable[Entry], globs: Sequence[str]) -> RestorePlan:
    """The restore plan of ``header``; raises RestoreError when the globs pick nothing or two chosen
    tables of different source databases would get the same name in the one target database."""
    tables: list[Table] = []
    data: dict[TableKey, list[Entry]] = {}
    for entry in entries:
        kind = entry.meta.get("type")
        if kind == "table":
            tables.append(Table.from_meta(entry.meta))
        elif kind == "data":
            data.setdefault((entry.meta["database"], entry.meta["table"]), []).append(entry)
    picked = [table for table in tables if chosen(table, globs)]
    if globs and not picked:
        names = ", ".join(table.display for table in tables if table.owner is None) or "none"
        raise RestoreError(f"--tables {' '.join(globs)} match no table of snapshot {header.id}; it has: {names}")
    _refuse_collisions(picked)
    held = held_back_tables(header.fingerprint)
    return RestorePlan(
        strategy=str(header.meta.get("strategy", "logical")),
        databases=tuple(header.meta.get("databases", sorted({table.database for table in tables}))),
        tables=[table for table in picked if table.key not in held],
        entries={key: sorted(found, key=lambda entry: entry.name) for key, found in data.items()},
        prints=table_prints(header.fingerprint),
        held_back={key: why for key, why in held.items() if any(table.key == key for table in picked)},
        ddl_settings={str(name): str(value) for name, value in (header.meta.get("ddl_settings") or {}).items()},
    )


def _refuse_collisions(tables: Sequence[Table]) -> None:
    by_name: dict[str, list[Table]] = {}
    for table in tables:
        by_name.setdefault(table.name, []).append(table)
    clashes = sorted(name for name, same in by_name.items() if len({table.database for table in same}) > 1)
    if clashes:
        raise RestoreError(
            f"tables of different databases would share a name in the target database ({', '.join(clashes)}); "
            "restore one database at a time with --tables 'db.*'"
        )


def plan_lines(plan: RestorePlan, target: ClickHouseTarget, header: SnapshotHeader) -> list[str]:
    """The plan as ``--dry-run`` prints it: tables, partitions, rows, bytes, and what is rewritten."""
    endpoint = target.endpoint
    lines = [
        f"strategy {plan.strategy}; snapshot taken from ClickHouse {header.fingerprint.get('server_version', '?')}",
        f"target {endpoint.describe()} (HTTP {endpoint.http_port}) database {target.database}, {target.credentials}",
    ]
    rows = sum(plan.rows(table) for table in plan.tables)
    size = sum(plan.size(table) for table in plan.tables)
    lines.append(f"{len(plan.tables)} tables, {rows} rows, {human_bytes(size)}")
    if plan.wanted_settings:
        shown = ", ".join(f"{name} = {value}" for name, value in sorted(plan.wanted_settings.items()))
        lines.append(f"CREATE statements are sent with {shown} (those the target server knows)")
    for table in plan.data_tables + plan.definitions + plan.views + plan.view_storage:
        lines.extend(_table_lines(plan, table, target.database))
    for key, why in sorted(plan.held_back.items()):
        lines.append(f"hold back {display_name(*key)}: {why} (create it by hand if you mean to)")
    return lines


def _table_lines(plan: RestorePlan, table: Table, database: str) -> list[str]:
    name = display_name(database, table.owner or table.name)
    changes = rewritten(table, plan.databases, database).changes if table.owner is None else ()
    notes = "".join(f"; {change}" for change in changes)
    if table.role is not TableRole.DATA:
        return [f"create {name} ({table.engine}): {table.reason}{notes}"]
    head = f"load {name} (the view's storage)" if table.owner else f"create {name} ({table.engine})"
    found = plan.prints.get(table.key)
    partitions = found.partitions if found else {}
    if not table.has_partitions:
        return [f"{head}: whole table, {plan.rows(table)} rows, {human_bytes(plan.size(table))}{notes}"]
    count = f"{len(partitions)} partition{'' if len(partitions) == 1 else 's'}"
    lines = [f"{head}: {count}, {plan.rows(table)} rows, {human_bytes(plan.size(table))}{notes}"]
    sizes = {entry.meta["partition"]: entry.size for entry in plan.entries.get(table.key, [])}
    for partition, (rows, _) in sorted(partitions.items())[:_PARTITION_LINES]:
        size = f", {human_bytes(sizes[partition])}" if partition in sizes else ""
        lines.append(f"  partition {partition}: {rows} rows{size}")
    if len(partitions) > _PARTITION_LINES:
        lines.append(f"  ... and {len(partitions) - _PARTITION_LINES} more partitions")
    return lines


# ---- the target ---------------------------------------------------------------------------------


@dataclass
class Footprint:
    """What one restore has done to its target so far: undone when the restore fails."""

    database: str
    database_created: bool = False
    tables: list[str] = field(default_factory=list)  # created by this restore, in order
    replaced: list[str] = field(default_factory=list)  # there before, dropped to be replaced

    @property
    def empty(self) -> bool:
        return not (self.database_created or self.tables or self.replaced)


def prepare_target(
    sql: SqlExecutor, plan: RestorePlan, target: ClickHouseTarget, *, yes: bool, footprint: Footprint | None = None
) -> list[str]:
    """Refuse a non-empty target database without ``yes``; with it, drop the tables this restore
    replaces. Then create the database. Returns the names dropped; ``footprint`` records them and
    whether the database was made here."""
    footprint = footprint or Footprint(target.database)
    exists = database_exists(sql, target.database)
    present = sorted(name for _, name in existing_tables(sql, [target.database])) if exists else []
    if present and not yes:
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise RestoreError(
            f"target database {target.database} on {target.endpoint.describe()} is not empty ({len(present)} tables: "
            f"{shown}); add --yes to restore into it (tables of the same names are replaced)"
        )
    restored = {table.owner or table.name for table in plan.tables}
    replaced = [name for name in present if name in restored]
    views_first = sorted(replaced, key=lambda name: name not in {view.name for view in plan.views})
    for name in views_first:
        sql.execute(f"DROP TABLE IF EXISTS {qualified(target.database, name)}")
        footprint.replaced.append(name)
    if not exists:
        sql.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(target.database)}")
        footprint.database_created = True
    return views_first


def ddl_settings_for(sql: SqlExecutor, plan: RestorePlan) -> dict[str, str]:
    """The plan's wanted settings the target server knows (a newer server dropped some, an older one
    never had others: sending those would fail every CREATE)."""
    wanted = plan.wanted_settings
    known = known_settings(sql, wanted)
    dropped = sorted(set(wanted) - set(known))
    if dropped:
        log.info("clickhouse.restore.settings_unknown", settings=dropped, why="the target server does not know them")
    return {name: value for name, value in wanted.items() if name in known}


def undo(sql: SqlExecutor, footprint: Footprint, where: str) -> str:
    """Remove what the restore recorded in ``footprint`` created (its tables, the database when it made
    it and nothing else is in it); what was there before stays. Returns what happened, for the error
    message ("" when the restore had done nothing yet); never raises."""
    if footprint.empty:
        return ""
    database = footprint.database
    removed: list[str] = []
    try:
        for name in reversed(footprint.tables):  # views before the tables they read
            sql.execute(f"DROP TABLE IF EXISTS {qualified(database, name)}")
            removed.append(name)
        others: list[str] = []
        if footprint.database_created:
            others = sorted(name for _, name in existing_tables(sql, [database]))
            if not others:
                sql.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)}")
    except ClickHouseError as exc:
        left = [name for name in footprint.tables if name not in removed]
        made = f"database {database} (created by this restore) with " if footprint.database_created else ""
        return (
            f"; could not remove what this restore created ({exc}): left on {where}: {made}"
            f"{_count(left)} of database {database}: {', '.join(left) or 'none'}; drop them by hand"
            + _replaced_note(footprint)
        )
    tables = _count(footprint.tables)
    if footprint.database_created and not others:
        what = f"database {database}" + (f" with {tables}" if footprint.tables else "")
        note = f"; removed what this restore created: {what}"
    else:
        listed = f" ({', '.join(footprint.tables)})" if footprint.tables else ""
        note = f"; removed what this restore created: {tables}{listed}" if footprint.tables else ""
        if footprint.database_created:
            kept = ", ".join(others)
            note += f"; database {database}, created by this restore, holds tables it did not create ({kept}): kept"
        else:
            note += f"; database {database} was there before and keeps its other tables"
    return note + _replaced_note(footprint)


def _count(names: Sequence[str]) -> str:
    return f"{len(names)} table{'' if len(names) == 1 else 's'}"


def _replaced_note(footprint: Footprint) -> str:
    if not footprint.replaced:
        return ""
    one = len(footprint.replaced) == 1
    return (
        f"; {', '.join(footprint.replaced)}, replaced by this restore, {'was' if one else 'were'} dropped before it "
        f"failed and {'is' if one else 'are'} not in {footprint.database} now"
    )


def rewritten(table: Table, databases: Collection[str], target: str) -> RewrittenDdl:
    """``table``'s definition renamed into ``target``; RestoreError when it cannot be rewritten."""
    try:
        return rewrite_create(table.create, databases=databases, target=target)
    except ValueError as exc:
        raise RestoreError(f"cannot recreate {table.display}: {exc}: {table.create[:200]}") from None


def create_tables(
    sql: SqlExecutor,
    tables: Sequence[Table],
    *,
    databases: Collection[str],
    target: str,
    settings: Mapping[str, str] | None = None,
    created: list[str] | None = None,
    workers: int = 1,
) -> None:
    """Create ``tables`` renamed into ``target``, each CREATE sent with ``settings``, on up to ``workers``
    threads (only for tables that depend on none of the others: ``sql`` must then be thread-safe, as
    Connections is); the names made are added to ``created``. Raises RestoreError naming the table
    (once the CREATEs under way end: all that were made are in ``created``)."""

    def create(table: Table) -> None:
        statement = rewritten(table, databases, target).sql
        try:
            sql.execute(statement, settings or None)
        except ClickHouseError as exc:
            raise RestoreError(f"cannot create {display_name(target, table.name)} ({table.engine}): {exc}") from exc
        if created is not None:
            created.append(table.name)  # list.append is atomic: safe from the workers
        if merging(table.engine):
            sql.execute(f"SYSTEM STOP MERGES {qualified(target, table.name)}")

    run_parallel(create, list(tables), workers=workers)


class DataLoader(Protocol):
    def load(self, tables: Sequence[Table], target_database: str) -> None: ...


def load_everything(
    sql: SqlExecutor,
    plan: RestorePlan,
    loader: DataLoader,
    target: str,
    *,
    settings: Mapping[str, str] | None = None,
    footprint: Footprint | None = None,
    workers: int = 1,
) -> None:
    """Tables, their data, definitions, views, views' storage: in that order. Every CREATE is sent
    with ``settings``; ``footprint`` records each table made. The tables holding data (which depend
    on none of the others) are created on up to ``workers`` threads; views one after another, in
    dependency order."""
    created = footprint.tables if footprint is not None else None
    create_tables(
        sql, plan.data_tables, databases=plan.databases, target=target, settings=settings, created=created, workers=workers
    )
    loader.load(plan.data_tables, target)
    create_tables(sql, plan.definitions, databases=plan.databases, target=target, settings=settings, created=created)
    create_tables(sql, plan.views, databases=plan.databases, target=target, settings=settings, created=created)
    loader.load(plan.view_storage, target)


def next_steps(plan: RestorePlan, target: str) -> list[str]:
    steps = []
    stopped = [qualified(target, table.name) for table in plan.data_tables if merging(table.engine)]
    if stopped:
        steps.append(
            "merges are stopped on tables of merging engines so they keep the rows as backed up; resume with: "
            + "; ".join(f"SYSTEM START MERGES {name}" for name in stopped)
        )
    for key, why in sorted(plan.held_back.items()):
        steps.append(f"{display_name(*key)} was not recreated ({why}); its definition is in the snapshot")
    return steps


# ---- verification -------------------------------------------------------------------------------
