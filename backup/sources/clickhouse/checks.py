"""The drill checks of ClickHouse sources: a query whose result must meet an expectation.

Queries run read-only (the connection's ``readonly = 1``: the server refuses any write), on the source
at backup time and on a restored copy in a drill. On a copy, the names of the snapshot's databases
in the query (``features.events``) are pointed at the copy's database, the way a restore rewrites
a view's query, and unqualified names resolve there too: a check never reads the source by mistake.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any, ClassVar

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Observation, Source
from backup.sources.clickhouse.client import ClickHouseError, Endpoint, driver_connector
from backup.sources.clickhouse.ddl import rewrite_fragment
from backup.sources.clickhouse.targets import ClickHouseTarget
from policies.model import ClickHouseCheck, ReferenceFrom

SHOWN_ROWS = 3  # rows of a result quoted in a report
READONLY = 164  # the server's error code for a change refused in read-only mode


class ClickHouseChecks:
    captures_at_backup: ClassVar[bool] = True

    def on_source(self, source: Source, check: ClickHouseCheck) -> Observation:
        endpoint: Endpoint = source.endpoint  # type: ignore[attr-defined]
        return run_query(endpoint, check.sql)

    def on_copy(self, source: Source, header: SnapshotHeader, target: Any, check: ClickHouseCheck) -> Observation:
        if not isinstance(target, ClickHouseTarget):
            raise TypeError(f"ClickHouse checks need a database to query, not {target!r}")
        databases = [str(name) for name in header.meta.get("databases", [])]
        sql = rewrite_fragment(check.sql, databases=databases, target=target.database)
        return run_query(target.endpoint, sql)

    def captured(self, header: SnapshotHeader, repository: Repository, check: ClickHouseCheck) -> Observation | None:
        return None  # in the manifest's meta

    def reference_values(self, source: Source, header: SnapshotHeader, target: Any, origin: ReferenceFrom) -> list[str]:
        """The first column of ``origin.sql``'s rows on the copy (database names pointed at it)."""
        target = _copy(target)
        databases = [str(name) for name in header.meta.get("databases", [])]
        sql = rewrite_fragment(str(origin.sql), databases=databases, target=target.database)
        return [str(row[0]) for row in query_rows(target.endpoint, sql) if row and row[0] is not None]

    def missing_references(self, source: Source, header: SnapshotHeader, target: Any, values: list[str]) -> list[str]:
        """Values naming a table (``database.table`` or ``table``) the copy's database does not hold."""
        target = _copy(target)
        database = target.database.replace("\\", "\\\\").replace("'", "\\'")
        tables = {
            str(row[0])
            for row in query_rows(target.endpoint, f"SELECT name FROM system.tables WHERE database = '{database}'")
        }
        return [value for value in values if value.rpartition(".")[2] not in tables]


def _copy(target: Any) -> ClickHouseTarget:
    if not isinstance(target, ClickHouseTarget):
        raise TypeError(f"ClickHouse checks need a database to query, not {target!r}")
    return target


def query_rows(endpoint: Endpoint, sql: str) -> list[list[Any]]:
    """``sql``'s rows at ``endpoint``, read-only; raises ClickHouseError (bad SQL, a write, no server)."""
    executor = driver_connector(endpoint)
    try:
        try:
            executor.execute("SET readonly = 1")  # from here on this connection cannot change anything
        except ClickHouseError as exc:
            if exc.code != READONLY:
                raise
            # the user's profile is read-only already (and may not even change the setting): so much the better
        return [[_plain(value) for value in row] for row in executor.execute(sql)]
    finally:
        executor.close()


def run_query(endpoint: Endpoint, sql: str) -> Observation:
    """``sql``'s result at ``endpoint``, read-only; raises ClickHouseError (bad SQL, a write, no server)."""
    rows = query_rows(endpoint, sql)
    single = rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else None
    if len(rows) == 1 and len(rows[0]) == 1:
        return Observation(single, 1, repr(single))
    shown = ", ".join(map(repr, rows[:SHOWN_ROWS])) + (
        f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
    )
    return Observation(rows, len(rows), f"{len(rows)} row(s): {shown}" if rows else "no rows")


def _plain(value: Any) -> Any:
    """A result value as the manifest (JSON) keeps it, so a captured result compares with a fresh one."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.datetime | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)
