"""How a ClickHouse restore loads the data of its tables, per strategy (``LOADERS``): the logical
strategy's verified Native bytes over HTTP, the native strategy's server-side RESTORE."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import (
    Progress,
)
from backup.sources.clickhouse.catalog import (
    Table,
)
from backup.sources.clickhouse.chain import NativeBackupInfo
from backup.sources.clickhouse.client import (
    Connections,
    HttpChannel,
    SqlExecutor,
    run_parallel,
)
from backup.sources.clickhouse.fingerprint import (
    TableKey,
    partition_label,
)
from backup.sources.clickhouse.logical import DATA_FORMAT
from backup.sources.clickhouse.native import (
    NativeLoader,
    s3_destination,
)
from backup.sources.clickhouse.restore import (
    DataLoader,
    RestorePlan,
)
from backup.sources.clickhouse.sql import (
    column_list,
    qualified,
)
from backup.sources.clickhouse.targets import ClickHouseTarget
from policies.errors import IntegrityError, RestoreError
from policies.model import ClickHouseSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadJob:
    """Everything a restore's data loader needs."""

    settings: ClickHouseSettings
    repository: Repository
    header: SnapshotHeader
    plan: RestorePlan
    target: ClickHouseTarget
    connections: Connections
    insert_settings: Mapping[str, str]
    progress: Progress | None


def http_loader(job: LoadJob) -> DataLoader:
    return HttpLoader(
        repository=job.repository,
        header=job.header,
        channel=HttpChannel(job.target.endpoint),
        entries=job.plan.entries,
        parallel=job.settings.parallel,
        settings=job.insert_settings,
        progress=job.progress,
    )


def native_loader(job: LoadJob) -> DataLoader:
    destination = s3_destination(job.repository, job.settings.native_endpoint_url)
    info = NativeBackupInfo.of(job.header)
    if destination is None or info is None:
        raise RestoreError(
            f"snapshot {job.header.id} is a native ClickHouse backup, which lives in an S3 repository; "
            "this repository is not one (or the snapshot records no backup)"
        )
    return NativeLoader(connections=job.connections, destination=destination, info=info)


LOADERS: dict[str, Callable[[LoadJob], DataLoader]] = {
    "logical": http_loader,
    "native": native_loader,
}


INSERT_SETTINGS = {"optimize_on_insert": "0", "insert_allow_materialized_columns": "1"}


def insert_settings_of(sql: SqlExecutor) -> dict[str, str]:
    """INSERT settings that keep rows exactly as backed up on servers that have them: newer servers
    collapse Replacing/Summing rows within an inserted block unless told not to, and MATERIALIZED
    columns take their stored values only when allowed (else the server recomputes them)."""
    names = ", ".join(f"'{name}'" for name in INSERT_SETTINGS)
    present = {str(row[0]) for row in sql.execute(f"SELECT name FROM system.settings WHERE name IN ({names})")}
    return {name: value for name, value in INSERT_SETTINGS.items() if name in present}


class HttpLoader:
    """Loads a logical snapshot's partitions with ``INSERT .. FORMAT Native`` over HTTP, in parallel."""

    def __init__(
        self,
        *,
        repository: Repository,
        header: SnapshotHeader,
        channel: HttpChannel,
        entries: Mapping[TableKey, list[Entry]],
        parallel: int,
        settings: Mapping[str, str],
        progress: Progress | None,
    ) -> None:
        self.repository = repository
        self.header = header
        self.channel = channel
        self.entries = entries
        self.parallel = parallel
        self.settings = settings
        self.progress = progress

    def load(self, tables: Sequence[Table], target_database: str) -> None:
        """Insert every data entry of ``tables`` (a view's storage goes in through the view)."""
        work = [
            (qualified(target_database, table.owner or table.name), table, entry)
            for table in tables
            for entry in self.entries.get(table.key, [])
            if entry.size > 0
        ]
        run_parallel(self._insert, work, workers=self.parallel)

    def _insert(self, item: tuple[str, Table, Entry]) -> None:
        target, table, entry = item
        label = partition_label(table.display, entry.meta["partition"])
        columns = f" ({column_list(table.columns)})" if table.columns else ""
        statement = f"INSERT INTO {target}{columns} FORMAT {entry.meta.get('format', DATA_FORMAT)}"
        self.channel.insert(statement, self._verified(entry, label), what=f"load of {label}", settings=self.settings)

    def _verified(self, entry: Entry, label: str) -> Iterator[bytes]:
        """The entry's bytes, each chunk verified on read, and the whole proven at the end."""
        digest = hashlib.sha256()
        size = 0
        for block in self.repository.iter_chunks(entry.chunks, snapshot=self.header.id):
            digest.update(block)
            size += len(block)
            if self.progress:
                self.progress(len(block))
            yield block
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{label}: restored bytes do not match the snapshot's SHA-256 (snapshot {self.header.id})")
