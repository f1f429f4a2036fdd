"""The native strategy: the server's own ``BACKUP .. TO S3`` into the repository's bucket.

The server writes its backup under ``native/<source>/<snapshot id>/`` next to the repository's
chunks (the repository's S3 location as the server reaches it: ``native_endpoint_url``, else the
repository's own endpoint), as an incremental on top of the previous native backup
(``base_backup``) until a chain holds ``MAX_CHAIN`` backups, then a full one again. The manifest
records where the backup lives, its base and the whole chain it needs (``meta["native"]``), and the
fingerprint taken around the BACKUP. A restore creates the tables itself (renamed, never replicated:
see ddl) and has the server ``RESTORE`` their data into them.

Chains and the retention rule (which native backups prune may delete) are in chain.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from backup.execute import mask_secrets
from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import Store
from backup.sources.clickhouse.catalog import Catalog, PartSet, Table, print_by_partition, table_parts
from backup.sources.clickhouse.chain import MAX_CHAIN, NativeBackupInfo, native_location
from backup.sources.clickhouse.client import ClickHouseError, Connections
from backup.sources.clickhouse.fingerprint import TableKey, TablePrint
from backup.sources.clickhouse.sql import TableRole, qualified, quote_string
from policies.errors import RestoreError, SourceError

log = structlog.get_logger(__name__)

BACKUP_MARKER = ".backup"  # the file a finished ClickHouse backup always has


@dataclass(frozen=True)
class S3Destination:
    """The repository's S3 location as the ClickHouse server reaches it."""

    endpoint_url: str
    bucket: str
    prefix: str
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)

    def url(self, location: str) -> str:
        path = "/".join(part for part in (self.bucket, self.prefix, location) if part)
        return f"{self.endpoint_url.rstrip('/')}/{path}"

    def expression(self, location: str) -> str:
        """``S3('url', 'key', 'secret')``; without keys the server uses its own credentials."""
        keys = f", {quote_string(self.access_key_id)}, {quote_string(self.secret_access_key)}" if self.access_key_id else ""
        return f"S3({quote_string(self.url(location))}{keys})"

    @property
    def secrets(self) -> list[str]:
        return [self.secret_access_key]


def s3_destination(repository: Repository, endpoint_override: str | None) -> S3Destination | None:
    """Where the server writes native backups, or None when the repository is not in S3."""
    # An S3 store exists only where its module was imported: a logical backup to a file repository
    # need not import boto3 for this question (a tenth of a second of every start).
    # A module in sys.modules may still be initializing in another thread (sources back up at once):
    # the import statement waits for it, an attribute lookup on it would not.
    if "backup.repository.s3store" not in sys.modules:
        return None
    from backup.repository.s3store import S3Store

    store: Store | Any = repository.store
    while not isinstance(store, S3Store) and hasattr(store, "inner"):
        store = store.inner  # retrying / fault-injecting wrappers
    if not isinstance(store, S3Store):
        return None
    # botocore keeps the client's credentials private; the server needs the same ones to write there.
    credentials = store.client._get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    return S3Destination(
        endpoint_override or store.client.meta.endpoint_url,
        store.bucket,
        store.prefix,
        frozen.access_key if frozen else "",
        frozen.secret_key if frozen else "",
    )


def plan_native_backup(
    source: str, snapshot_id: str, previous: SnapshotHeader | None, destination: S3Destination, *, base_exists: bool
) -> NativeBackupInfo:
    """This snapshot's backup: an incremental on the previous native one while that one is where this
    repository is, still stored, and its chain is shorter than MAX_CHAIN; else a full backup."""
    location = native_location(source, snapshot_id)
    full = NativeBackupInfo(location, destination.url(location))
    base = NativeBackupInfo.of(previous)
    if previous is None or base is None or not base_exists:
        return full
    if base.url != destination.url(base.location) or len(base.chain) + 2 > MAX_CHAIN:
        return full
    return NativeBackupInfo(location, full.url, base.location, previous.id, (base.location, *base.chain))


# ---- backup -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeResult:
    prints: dict[TableKey, TablePrint]
    info: NativeBackupInfo | None  # None: nothing to back up
    unpinned: list[str]


def backup_statement(tables: Sequence[Table], destination: S3Destination, info: NativeBackupInfo) -> str:
    """``BACKUP TABLE .., TABLE .. TO S3(..) [SETTINGS base_backup = S3(..)]``; a materialized
    view's storage is backed up with its view."""
    items = ", ".join(f"TABLE {table.sql}" for table in tables if table.owner is None)
    base = f" SETTINGS base_backup = {destination.expression(info.base)}" if info.base else ""
    return f"BACKUP {items} TO {destination.expression(info.location)}{base}"


class NativeBackup:
    """One native snapshot: fingerprint, BACKUP, prove nothing moved meanwhile."""

    def __init__(
        self, *, connections: Connections, store: Store, destination: S3Destination, info: NativeBackupInfo
    ) -> None:
        self.sql = connections
        self.store = store
        self.destination = destination
        self.info = info

    def run(self, catalog: Catalog) -> NativeResult:
        data = [table for table in catalog.tables if table.role is TableRole.DATA]
        if not catalog.tables:
            return NativeResult({}, None, [])
        parts_before = {table.key: self._parts(table) for table in data}
        prints = {table.key: self._print(table) for table in data}
        self._execute(backup_statement(catalog.tables, self.destination, self.info))
        unpinned = [table for table in data if self._moved(table, parts_before[table.key], prints[table.key])]
        for table in unpinned:
            prints[table.key].unpinned.update(prints[table.key].partitions)
        if not self.store.exists(f"{self.info.location}/{BACKUP_MARKER}"):
            raise SourceError(
                f"the server reported BACKUP done but {self.info.url}/{BACKUP_MARKER} is not in the repository: "
                "does native_endpoint_url point at the repository's bucket?"
            )
        log.info("clickhouse.native.backup", location=self.info.location, base=self.info.base, unpinned=len(unpinned))
        return NativeResult(prints, self.info, [table.display for table in unpinned])

    def _parts(self, table: Table) -> dict[str, PartSet]:
        return table_parts(self.sql, table) if table.has_partitions else {}

    def _print(self, table: Table) -> TablePrint:
        partitions = print_by_partition(self.sql, table.sql, table.columns, partitions=table.has_partitions)
        return TablePrint(table.database, table.name, table.columns, table.has_partitions, table.owner, partitions)

    def _moved(self, table: Table, parts_before: dict[str, PartSet], before: TablePrint) -> bool:
        """Whether ``table`` changed between its fingerprint and the end of the BACKUP."""
        if table.has_partitions:
            return self._parts(table) != parts_before
        return self._print(table).partitions != before.partitions

    def _execute(self, statement: str) -> None:
        try:
            rows = self.sql.execute(statement)
        except ClickHouseError as exc:
            raise SourceError(
                f"BACKUP to {self.info.url} failed: {mask_secrets(str(exc), self.destination.secrets)}"
            ) from None
        status = str(rows[0][1]) if rows and len(rows[0]) > 1 else "?"
        if status != "BACKUP_CREATED":
            raise SourceError(f"BACKUP to {self.info.url} ended with status {status}")


# ---- restore ------------------------------------------------------------------------------------


class NativeLoader:
    """Has the target server RESTORE a native backup's data into tables Lifeboat created."""

    def __init__(self, *, connections: Connections, destination: S3Destination, info: NativeBackupInfo) -> None:
        self.sql = connections
        self.destination = destination
        self.info = info

    def load(self, tables: Sequence[Table], target_database: str) -> None:
        """RESTORE the data of ``tables`` (a view's storage through its view) into ``target_database``."""
        names = [(table.database, table.owner or table.name) for table in tables]
        items = [f"TABLE {qualified(database, name)} AS {qualified(target_database, name)}" for database, name in names]
        if not items:
            return
        statement = (
            f"RESTORE {', '.join(items)} FROM {self.destination.expression(self.info.location)} "
            "SETTINGS create_table = 0, allow_different_table_def = 1"
        )
        try:
            self.sql.execute(statement)
        except ClickHouseError as exc:
            raise RestoreError(
                f"RESTORE from {self.info.url} failed: {mask_secrets(str(exc), self.destination.secrets)}"
            ) from None
