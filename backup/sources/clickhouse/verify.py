"""A restored ClickHouse copy compared with its snapshot: every table's and partition's rows and
content hash, and every definition (tables, views, materialized views, dictionaries)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from backup.repository.manifest import SnapshotHeader
from backup.sources.base import Verdict, Verification
from backup.sources.clickhouse.catalog import (
    database_exists,
    existing_tables,
    print_by_partition,
    print_tables,
    read_definitions,
)
from backup.sources.clickhouse.client import ClickHouseError, Connections, run_parallel
from backup.sources.clickhouse.fingerprint import (
    Definition,
    TablePrint,
    compare,
    definition_differences,
    held_back_tables,
    snapshot_definitions,
    table_prints,
)
from backup.sources.clickhouse.sql import (
    glob_matches,
    qualified,
    row_hash,
)
from backup.sources.clickhouse.targets import ClickHouseTarget

log = structlog.get_logger(__name__)


def verify_target(sql: Connections, header: SnapshotHeader, target: ClickHouseTarget, *, parallel: int) -> Verification:
    """Fingerprint the target's tables and compare them, and the target's definitions, with the
    snapshot's; never raises."""
    held = held_back_tables(header.fingerprint)
    expected = {
        key: want
        for key, want in table_prints(header.fingerprint).items()
        if key not in held and _picked(want, target.tables)
    }
    where = f"{target.endpoint.describe()} database {target.database}"
    recorded = snapshot_definitions(header.fingerprint)
    try:
        if not database_exists(sql, target.database):
            return Verification(
                Verdict.UNVERIFIED,
                f"cannot verify: database {target.database} does not exist on {target.endpoint.describe()}",
            )
        present = {name for _, name in existing_tables(sql, [target.database])}
        groups = _print_groups(list(expected.values()), parallel=parallel)
        printed = run_parallel(lambda group: _actual_prints(sql, group, target.database, present), groups, workers=parallel)
        found = [got for group in printed for got in group]
        copy = read_definitions(sql, [target.database]) if recorded is not None else []
    except ClickHouseError as exc:
        return Verification(Verdict.UNVERIFIED, f"cannot verify {where}: {exc}")
    actual = {want.key: got for want, got in zip(expected.values(), found, strict=True)}
    result = compare(expected, actual, shown={})
    databases = tuple(header.meta.get("databases", ())) or tuple({item.database for item in recorded or ()})
    wanted = [
        item.retargeted(databases, target.database)
        for item in recorded or ()
        if item.key not in held and _definition_picked(item.database, item, target.tables)
    ]
    schema = definition_differences(
        wanted,
        [item.spelled() for item in copy if any(_definition_picked(db, item, target.tables) for db in databases)],
    )
    checked = {"tables": result.tables, "partitions": result.partitions, "rows": result.rows, "definitions": len(wanted)}
    differences = result.differences + schema
    if differences:
        message = f"{where} differs from snapshot {header.id} in {len(differences)} places"
        return Verification(Verdict.MISMATCH, message, differences + result.unverifiable, checked)
    if recorded is None:
        message = (
            f"{where}: the data matches, but snapshot {header.id} records no table definitions (taken by an older "
            "Lifeboat), so the definitions could not be compared"
        )
        return Verification(Verdict.UNVERIFIED, message, result.unverifiable, checked)
    if result.verdict is Verdict.UNVERIFIED:
        message = f"{where}: partitions that changed while backed up differ, so they cannot be verified"
        return Verification(Verdict.UNVERIFIED, message, result.unverifiable, checked)
    counts = f"{result.tables} tables, {result.partitions} partitions, {result.rows} rows, {len(wanted)} definitions"
    return Verification(Verdict.MATCH, f"{where} matches snapshot {header.id}: {counts}", [], checked)


def _definition_picked(database: str, item: Definition, globs: Sequence[str]) -> bool:
    return not globs or any(glob_matches(glob, database, item.owner or item.table) for glob in globs)


def _picked(want: TablePrint, globs: Sequence[str]) -> bool:
    return not globs or any(glob_matches(glob, want.database, want.via or want.table) for glob in globs)


PRINT_GROUP = 64
"""Tables fingerprinted by one query (UNION ALL) at most."""
PRINT_GROUP_CHARS = 128 * 1024
"""Characters of one such query at most (the server's max_query_size is 256 KiB)."""


def _print_groups(wanted: list[TablePrint], *, parallel: int) -> list[list[TablePrint]]:
    """``wanted`` in order, cut into groups of up to PRINT_GROUP tables and PRINT_GROUP_CHARS of
    query, at least ``parallel`` groups where there are that many tables."""
    most = min(PRINT_GROUP, max(1, -(-len(wanted) // max(parallel, 1))))
    groups: list[list[TablePrint]] = []
    chars = 0
    for want in wanted:
        text = len(row_hash(want.columns)) + 200 if want.columns else 0
        if not groups or len(groups[-1]) >= most or chars + text > PRINT_GROUP_CHARS:
            groups.append([])
            chars = 0
        groups[-1].append(want)
        chars += text
    return groups


def _actual_prints(sql: Connections, group: list[TablePrint], database: str, present: set[str]) -> list[TablePrint | str]:
    """``_actual_print`` of each of ``group``, those present in one query; where that query fails
    (one table cannot be fingerprinted), each table on its own, so the report names the one."""
    listed = [want for want in group if (want.via or want.table) in present and want.columns]
    try:
        prints = print_tables(
            sql, [(qualified(database, want.via or want.table), want.columns, want.partitioned) for want in listed]
        )
    except ClickHouseError as exc:
        if exc.code is None:
            raise  # the server is gone: nothing can be verified
        return [_actual_print(sql, want, database, present) for want in group]
    by_table = {id(want): partitions for want, partitions in zip(listed, prints, strict=True)}
    return [
        TablePrint(want.database, want.table, want.columns, want.partitioned, want.via, by_table[id(want)])
        if id(want) in by_table
        else _actual_print(sql, want, database, present)
        for want in group
    ]


def _actual_print(sql: Connections, want: TablePrint, database: str, present: set[str]) -> TablePrint | str:
    name = want.via or want.table
    if name not in present:
        return f"missing from {database}"
    try:
        partitions = print_by_partition(sql, qualified(database, name), want.columns, partitions=want.partitioned)
    except ClickHouseError as exc:
        if exc.code is None:
            raise  # the server is gone: nothing can be verified
        return f"cannot be fingerprinted: {exc}"
    return TablePrint(want.database, want.table, want.columns, want.partitioned, want.via, partitions)


def failure_message(verification: Verification, target: ClickHouseTarget) -> str:
    shown = "; ".join(verification.differences[:20])
    more = f" (and {len(verification.differences) - 20} more)" if len(verification.differences) > 20 else ""
    return (
        f"restored into {target.describe()} but verification says {verification.verdict}: {verification.message}"
        + (f": {shown}{more}" if shown else "")
        + f"; the target holds what was loaded: drop database {target.database} before trying again"
    )
