"""The logical strategy: table data as ``FORMAT Native`` bytes over HTTP, per partition, any server.

Backup: for every table holding data, each partition (MergeTree family) or the whole table (Log,
Memory...) streams ``SELECT <stored columns> .. FORMAT Native`` untouched into repository chunks
(the stored columns are those of ``SELECT *`` and the MATERIALIZED ones, whose values are kept as
stored). The rows of every stored stream are counted as it passes (clickhouse_native_rows) and must
equal the count of its fingerprint: a user profile that cuts results short (``max_result_rows`` with
``result_overflow_mode = 'break'``) fails the snapshot instead of shrinking it; the export's
settings lift such limits where the user may change settings. A partition whose
active parts (name, rows, modification time) and table definition are those of the previous
snapshot reuses its entry without reading a byte. Concurrent writes: an export reads exactly the
parts it listed (``_part IN (..)``) and is fingerprinted with the same filter; if one of those
parts is gone afterwards (merged, mutated, dropped) the export is retried, a bounded number of times,
then taken by content (fingerprint before == after) or recorded as unpinned.

Many small partitions: those of one table (up to SMALL_PARTITION each) are exported in batches, one
``SELECT <stored columns>, _partition_id .. WHERE _part IN (<their pinned parts>)`` per batch,
fingerprinted by the same filter in one query ``GROUP BY _partition_id`` (each partition's count()
and sum(row hash), as its own query gives them) and checked against one read of the table's parts.
The server sends each block from one part, so of one partition (the splitter checks it): the stream
is split by block into the partitions' streams (without the ``_partition_id`` column: the entries
are what per-partition exports store, same names and meta) and each partition's rows are counted in
its blocks as they pass. A block of several partitions, or a type the splitter cannot follow, sends
the batch back to one export per partition; a partition whose parts moved meanwhile is pinned again
and exported on its own.

Consistency: the active parts of every table are pinned at the start, in one read of system.parts
for all of them (catalog.pin_parts), and each partition exports exactly its pinned parts,
so the snapshot is the state of all tables at one instant. A partition whose pinned parts are gone
when it is exported (merged away) is pinned again and recorded; a table without parts (Log, Memory)
is read when exported. The manifest's ``consistency`` meta says it: the earliest and latest pin
time, the window between them, and which tables moved and why.

Restore: each partition's verified bytes are the body of ``INSERT INTO .. (<stored columns>) FORMAT
Native`` with ``insert_allow_materialized_columns = 1``, so MATERIALIZED columns keep their stored values.
"""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, cast

import structlog

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter, StoredStream
from backup.sources.base import Progress
from backup.sources.clickhouse.catalog import (
    Catalog,
    PartSet,
    Table,
    batch_filter,
    existing_tables,
    partition_bytes,
    partition_parts,
    parts_filter,
    pin_parts,
    print_many,
    print_partitions,
    print_where,
    table_parts,
    tables_parts,
)
from backup.sources.clickhouse.client import (
    UNKNOWN_DATABASE,
    UNKNOWN_TABLE,
    ClickHouseError,
    Connections,
    HttpChannel,
    SqlExecutor,
    run_parallel,
)
from backup.sources.clickhouse.consistency import Window
from backup.sources.clickhouse.fingerprint import WHOLE_TABLE, PartitionPrint, TableKey, TablePrint
from backup.sources.clickhouse.native_rows import (
    CountingReader,
    NativeBlockSplitter,
    NativeRowCounter,
)
from backup.sources.clickhouse.plan import Batch, PartitionJob, TableGroup, batch_jobs, plan_exports
from backup.sources.clickhouse.sql import TableRole, column_list, quote_string
from policies.errors import SourceError

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 3
"""Exports of one partition before it is taken by content or recorded as unpinned."""

DATA_FORMAT = "Native"
PARTITION_KEY = "_partition_id"
READ_SIZE = 1 << 20
LISTED_EXPORTS = 100  # exported partitions named in a backup report (a whole run's and a sharded run's)

EXPORT_SETTINGS = {
    "max_result_rows": "0",
    "max_result_bytes": "0",
    "result_overflow_mode": "throw",
    "max_rows_to_read": "0",
    "max_bytes_to_read": "0",
    "read_overflow_mode": "throw",
    "timeout_overflow_mode": "throw",
    "limit": "0",
    "offset": "0",
}
"""Export settings that keep a user profile's limits from cutting an export short without an error:
result and read limits lifted, the time limit (left to the operator) made to throw, not break."""


def export_settings(sql: SqlExecutor) -> dict[str, str]:
    """The EXPORT_SETTINGS this user's profile sets otherwise, to send with every export. Only those:
    a readonly user may change no setting (and needs none changed when its profile sets no limit).
    A readonly user whose profile limits results gets none: the stored streams' row counts are then
    the guard (a short export fails the snapshot)."""
    names = ", ".join(quote_string(name) for name in [*EXPORT_SETTINGS, "readonly"])
    rows = sql.execute(f"SELECT name, value FROM system.settings WHERE name IN ({names})")
    current = {str(name): str(value) for name, value in rows}
    changes = {name: wanted for name, wanted in EXPORT_SETTINGS.items() if name in current and current[name] != wanted}
    if changes and current.get("readonly", "0") == "1":
        log.warning("clickhouse.export.limits_kept", settings=changes, why="the user is readonly")
        return {}
    return changes


# ---- entries ------------------------------------------------------------------------------------


def table_entry_name(database: str, table: str) -> str:
    return f"table/{_q(database)}/{_q(table)}"


def data_entry_name(database: str, table: str, partition: str) -> str:
    return f"data/{_q(database)}/{_q(table)}/{_q(partition) or '-'}"


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def table_entry(table: Table) -> Entry:
    """A table's definition as an entry (no bytes: the definition is in its meta)."""
    return Entry(table_entry_name(table.database, table.name), 0, _EMPTY_SHA256, [], table.to_meta())


def data_meta(entry: Entry) -> dict[str, Any] | None:
    return entry.meta if entry.meta.get("type") == "data" else None


def entry_print(entry: Entry) -> PartitionPrint:
    return int(entry.meta["rows"]), int(entry.meta["hash"])


def previous_exports(repository: Repository, previous: SnapshotHeader | None) -> dict[tuple[str, str, str], Entry]:
    """The data entries of the previous logical snapshot, for reuse."""
    if previous is None or previous.meta.get("strategy") != "logical":
        return {}
    found: dict[tuple[str, str, str], Entry] = {}
    for entry in repository.entries(previous):
        meta = data_meta(entry)
        if meta is not None:
            found[(meta["database"], meta["table"], meta["partition"])] = entry
    return found


# ---- backup -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a logical backup did, counted from many threads."""

    partitions: int = 0  # MergeTree partitions exported
    whole_tables: int = 0  # tables without partitions, exported whole
    retries: int = 0
    exported: list[str] = field(default_factory=list)  # labels, for the report
    unpinned: list[str] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)  # exports whose rows could not be counted
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self,
        *,
        exported: PartitionJob | None = None,
        retries: int = 0,
        unpinned: str | None = None,
        uncounted: str | None = None,
    ) -> None:
        with self._lock:
            if uncounted:
                self.uncounted.append(uncounted)
            if exported is not None:
                self.exported.append(exported.label)
                if exported.partition == WHOLE_TABLE:
                    self.whole_tables += 1
                else:
                    self.partitions += 1
            self.retries += retries
            if unpinned:
                self.unpinned.append(unpinned)


@dataclass(frozen=True)
class Exported:
    job: PartitionJob
    entry: Entry
    print: PartitionPrint
    pinned: bool


@dataclass(frozen=True)
class LogicalResult:
    prints: dict[TableKey, TablePrint]
    entries: list[Entry]  # data entries of this snapshot (exported and reused)
    reused: int
    tally: Tally
    consistency: dict[str, Any] = field(default_factory=dict)  # see Window


class LogicalBackup:
    """One logical snapshot of the tables of ``catalog`` into ``writer``."""

    window: Window  # made by run(), from the pin

    def __init__(
        self,
        *,
        connections: Connections,
        channel: HttpChannel,
        writer: SnapshotWriter,
        previous: SnapshotHeader | None,
        parallel: int,
        progress: Progress | None,
    ) -> None:
        self.sql = connections
        self.channel = channel
        self.writer = writer
        self.previous = previous
        self.parallel = parallel
        self.progress = progress
        self.tally = Tally()
        self.settings: dict[str, str] = {}  # of every export query (export_settings)
        # Fingerprints run beside the exports (threads start only when used; closed by run()).
        self._printer = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lifeboat-clickhouse-print")

    def run(self, catalog: Catalog) -> LogicalResult:
        """Add every table's definition and data to the writer; raises SourceError."""
        for table in catalog.tables:
            self.writer.add(table_entry(table))
        self.settings = export_settings(self.sql)
        previous = previous_exports(self.writer.repository, self.previous)
        pin = pin_parts(self.sql, catalog.databases)
        self.window = Window(pin)
        plan = plan_exports(catalog.tables, pin.parts, previous)
        for entry in plan.reused:
            self.writer.add(entry)
        # Tables without parts cannot be pinned: they are read first, as close to the pin as can be.
        jobs = sorted(plan.jobs, key=lambda job: job.partition != WHOLE_TABLE)
        sizes = partition_bytes(self.sql, catalog.databases) if any(job.partition != WHOLE_TABLE for job in jobs) else {}
        items = batch_jobs(jobs, sizes, pin.parts, parallel=self.parallel)
        with self._printer:
            results = run_parallel(self._export_item, items, workers=self.parallel)
        exported = [done for result in results for done in (result if isinstance(result, list) else [result])]
        self._check_still_there(catalog)
        prints = {table.key: _empty_print(table) for table in catalog.tables if table.role is TableRole.DATA}
        for entry in plan.reused:
            prints[(entry.meta["database"], entry.meta["table"])].partitions[entry.meta["partition"]] = entry_print(entry)
        for done in filter(None, exported):
            table_print = prints[done.job.table.key]
            table_print.partitions[done.job.partition] = done.print
            if not done.pinned:
                table_print.unpinned.add(done.job.partition)
        entries = plan.reused + [done.entry for done in exported if done]
        return LogicalResult(prints, entries, len(plan.reused), self.tally, self.window.to_json())

    def _export_item(self, item: PartitionJob | Batch | TableGroup) -> Exported | list[Exported | None] | None:
        if isinstance(item, PartitionJob):
            return self._export(item)
        try:
            return self._export_batch(item) if isinstance(item, Batch) else self._export_group(item)
        except ClickHouseError as exc:
            if exc.code in (UNKNOWN_TABLE, UNKNOWN_DATABASE):
                shown = item.table.display if isinstance(item, Batch) else "a table"
                raise SourceError(
                    f"{shown} disappeared during the backup (dropped or renamed?); nothing was "
                    f"committed: run the backup again ({exc})"
                ) from exc
            raise SourceError(f"{item.label}: {exc}") from exc

    def _export_batch(self, batch: Batch) -> list[Exported | None]:
        """Export and fingerprint the pinned parts of the batch's partitions in one query each, the
        export split into one stored stream per partition as it arrives (each checked as a partition's
        own export is: the rows counted in its stored blocks equal its print's). A partition whose parts
        moved meanwhile is exported on its own, pinned again; a stream that cannot be split (a block
        of several partitions) makes every partition of the batch be exported on its own."""
        table = batch.table
        pinned = {job.partition: self.window.pin.parts.get(table.key, {}).get(job.partition, ()) for job in batch.jobs}
        pinned = {partition: parts for partition, parts in pinned.items() if parts}
        if not pinned:
            return [None for _ in batch.jobs]
        where = batch_filter(pinned)
        printing = self._printer.submit(print_partitions, self.sql, table.sql, table.columns, where)
        try:
            streams = self._stream_batch(batch, where)
        except BaseException:
            printing.cancel()
            wait([printing])
            raise
        prints = printing.result()
        if streams is None:
            return [self._export(job) for job in batch.jobs]
        active = table_parts(self.sql, table)
        results: list[Exported | None] = []
        for job in batch.jobs:
            parts = pinned.get(job.partition, ())
            if not parts:
                results.append(None)  # dropped since it was pinned: not part of this snapshot
                continue
            if not {part.name for part in parts} <= {part.name for part in active.get(job.partition, ())}:
                self.tally.add(retries=1)
                log.info("clickhouse.partition.moved", table=table.display, partition=job.partition, attempt=1)
                results.append(self._export_pinned(job, again=True))
                continue
            stored, counter = streams.get(job.partition) or self._store(b"", NativeRowCounter.counted(0, 0))
            partition_print = prints.get(job.partition, (0, 0))
            rows = self._counted(job, counter, partition_print[0])
            results.append(self._done(job, stored, parts, partition_print, rows, pinned=True))
        return results

    def _stream_batch(self, batch: Batch, where: str) -> dict[str, tuple[StoredStream, NativeRowCounter]] | None:
        """Export the rows ``where`` selects with their partition id, and store each partition's
        blocks (without that column) as its own stream; None when the stream cannot be split."""
        table = batch.table
        statement = (
            f"SELECT {column_list(table.columns)}, {PARTITION_KEY} FROM {table.sql} WHERE {where} FORMAT {DATA_FORMAT}"
        )
        splitter = NativeBlockSplitter(PARTITION_KEY)
        held: dict[str, list[bytes]] = {}
        counted: dict[str, list[int]] = {}  # partition -> [rows, blocks], counted by the splitter
        wanted = {job.partition for job in batch.jobs}
        with self.channel.export(statement, what=f"export of {batch.label}", settings=self.settings) as stream:
            while data := stream.read(READ_SIZE):
                splitter.feed(data)
                for partition, rows, block in splitter.take():
                    held.setdefault(partition, []).append(block)
                    count = counted.setdefault(partition, [0, 0])
                    count[0] += rows
                    count[1] += 1
                if splitter.mixed or splitter.uncountable:
                    break
        why = splitter.mixed or splitter.uncountable or splitter.broken
        if why is None and not held.keys() <= wanted:
            why = f"rows of partitions {sorted(held.keys() - wanted)} that were not asked for"
        if why is None:
            try:
                splitter.finish()
            except ValueError as exc:
                why = str(exc)
        if why is not None:
            log.info("clickhouse.batch.unsplit", table=table.display, partitions=len(batch.jobs), why=why)
            return None

        def store(partition: str) -> tuple[StoredStream, NativeRowCounter]:
            data = b"".join(held.pop(partition))
            return self._store(data, NativeRowCounter.counted(*counted[partition]))

        # Many small streams: stored side by side, or each would wait for its one chunk's write.
        partitions = sorted(held)
        workers = 2 * self.writer.repository.workers
        return dict(zip(partitions, run_parallel(store, partitions, workers=workers), strict=True))

    def _store(self, data: bytes, counter: NativeRowCounter) -> tuple[StoredStream, NativeRowCounter]:
        """Store one partition's share of a batch (whole blocks, ``counter`` their rows) as its own stream."""
        stored = self.writer.write_stream(cast(BinaryIO, io.BytesIO(data)), progress=self.progress)
        return stored, counter

    def _export(self, job: PartitionJob) -> Exported | None:
        try:
            if job.partition == WHOLE_TABLE:
                why = f"engine {job.table.engine} has no parts to pin: read when exported"
                self.window.add(job.table.display, "", _now(), why)
                return self._export_by_content(job, where="", attempts=MAX_ATTEMPTS)
            return self._export_pinned(job)
        except ClickHouseError as exc:
            if exc.code in (UNKNOWN_TABLE, UNKNOWN_DATABASE):
                raise SourceError(
                    f"table {job.table.display} disappeared during the backup (dropped or renamed?); nothing was "
                    f"committed: run the backup again ({exc})"
                ) from exc
            raise SourceError(f"{job.label}: {exc}") from exc

    def _export_pinned(self, job: PartitionJob, *, again: bool = False) -> Exported | None:
        """Export the partition's pinned parts; where they are gone (merged away since the pin), pin
        the partition again (recorded in the window) and export that. ``again``: they are known to
        be gone (a batch found it), so the first attempt pins again."""
        table, partition = job.table, job.partition
        parts = self.window.pin.parts.get(table.key, {}).get(partition, ())
        for attempt in range(1 if again else 0, MAX_ATTEMPTS):
            if attempt:
                parts = partition_parts(self.sql, table, partition)
                why = f"pinned again: its parts were merged away or replaced after the pin (attempt {attempt + 1})"
                self.window.add(table.display, partition, _now(), why)
            if not parts:
                return None  # the partition was dropped since it was pinned: it is not part of this snapshot
            where = parts_filter(parts)
            stored, counter, partition_print = self._stream_and_print(job, where)
            still_active = {part.name for part in partition_parts(self.sql, table, partition)}
            if {part.name for part in parts} <= still_active:
                rows = self._counted(job, counter, partition_print[0])
                return self._done(job, stored, parts, partition_print, rows, pinned=True)
            self.tally.add(retries=1)
            log.info("clickhouse.partition.moved", table=table.display, partition=partition, attempt=attempt + 1)
        self.window.add(table.display, partition, _now(), "could not be pinned by its parts: taken by content")
        return self._export_by_content(job, where=f"_partition_id = {quote_string(partition)}", attempts=1)

    def _stream_and_print(self, job: PartitionJob, where: str) -> tuple[StoredStream, NativeRowCounter, PartitionPrint]:
        """Export and fingerprint the same pinned parts at the same time: the server's full scan for
        the print overlaps the export instead of following it (the caller proves the parts stayed)."""
        printing = self._printer.submit(print_where, self.sql, job.table.sql, job.table.columns, where)
        try:
            stored, counter = self._stream(job, where)
        except BaseException:
            printing.cancel()
            wait([printing])  # never leave a query running behind an error
            raise
        return stored, counter, printing.result()

    def _export_by_content(self, job: PartitionJob, *, where: str, attempts: int) -> Exported:
        """Export between two fingerprints of the same rows; equal prints pin the export by content."""
        table = job.table
        for attempt in range(attempts):
            before = print_where(self.sql, table.sql, table.columns, where)
            stored, counter = self._stream(job, where)
            after = print_where(self.sql, table.sql, table.columns, where)
            if before == after:
                rows = self._counted(job, counter, after[0])
                parts = partition_parts(self.sql, table, job.partition) if table.has_partitions else ()
                return self._done(job, stored, parts, after, rows, pinned=True)
            if attempt < attempts - 1:
                self.tally.add(retries=1)
        log.warning("clickhouse.partition.unpinned", table=table.display, partition=job.partition)
        self.tally.add(unpinned=job.label)
        return self._done(job, stored, (), after, self._counted(job, counter, None), pinned=False)

    def _stream(self, job: PartitionJob, where: str) -> tuple[StoredStream, NativeRowCounter]:
        """Export the stored columns of the rows ``where`` selects into the writer, counting them."""
        condition = f" WHERE {where}" if where else ""
        columns = column_list(job.table.columns) or "*"
        statement = f"SELECT {columns} FROM {job.table.sql}{condition} FORMAT {DATA_FORMAT}"
        with self.channel.export(statement, what=f"export of {job.label}", settings=self.settings) as stream:
            counting = CountingReader(cast(BinaryIO, stream))
            stored = self.writer.write_stream(cast(BinaryIO, counting), progress=self.progress)
        return stored, counting.counter

    def _counted(self, job: PartitionJob, counter: NativeRowCounter, pinned_rows: int | None) -> int | None:
        """The rows of the stored stream; SourceError (nothing is committed) when the stream is not
        whole Native or holds other than ``pinned_rows`` (None: the export was not pinned)."""
        try:
            rows = counter.finish()
        except ValueError as exc:
            raise SourceError(f"{job.label}: the stored export is not whole: {exc}; nothing was committed") from None
        if rows is None:
            why = counter.uncountable
            log.warning("clickhouse.export.uncounted", table=job.table.display, partition=job.partition, why=why)
            self.tally.add(uncounted=job.label)
        elif pinned_rows is not None and rows != pinned_rows:
            raise SourceError(
                f"{job.label}: the export stored {rows} rows but the partition holds {pinned_rows}: the server cut the "
                f"export short (does user '{self.channel.endpoint.user}' have a profile limiting results, such as "
                "max_result_rows with result_overflow_mode = 'break', that it may not lift?); nothing was committed"
            )
        return rows

    def _done(
        self,
        job: PartitionJob,
        stored: StoredStream,
        parts: PartSet,
        partition_print: PartitionPrint,
        stored_rows: int | None,
        *,
        pinned: bool,
    ) -> Exported:
        table = job.table
        meta = {
            "type": "data",
            "database": table.database,
            "table": table.name,
            "partition": job.partition,
            "format": DATA_FORMAT,
            "rows": partition_print[0],
            "hash": partition_print[1],
            "stored_rows": stored_rows,  # counted in the stored Native stream (None: a type it cannot count)
            "pinned": pinned,
            "schema": table.schema_id,
            "parts": [part.to_json() for part in parts],
        }
        entry = Entry(
            data_entry_name(table.database, table.name, job.partition), stored.size, stored.sha256, stored.chunks, meta
        )
        self.writer.add(entry)
        self.tally.add(exported=job)
        return Exported(job, entry, partition_print, pinned)

    def _export_group(self, group: TableGroup) -> list[Exported | None]:
        """Export the pinned parts of each of the group's partitions (small ones of different tables)
        by its own query, while one query fingerprints them all with the same filters; then one read
        of system.parts proves each one's parts stayed from the pin to the end of its export (a part
        is never changed, its name never reused), else it is exported on its own, pinned again."""
        pin = self.window.pin.parts
        pinned = [(job, pin.get(job.table.key, {}).get(job.partition, ())) for job in group.jobs]
        wanted = [(index, job, parts, parts_filter(parts)) for index, (job, parts) in enumerate(pinned) if parts]
        selections = [(job.table.sql, job.table.columns, where) for _, job, _, where in wanted]
        printing = self._printer.submit(print_many, self.sql, selections)
        try:
            streams = [self._stream(job, where) for _, job, _, where in wanted]
        except BaseException:
            printing.cancel()
            wait([printing])  # never leave a query running behind an error
            raise
        prints = printing.result()
        active = tables_parts(self.sql, {job.table.key: job.table for _, job, _, _ in wanted}.values())
        results: list[Exported | None] = [None for _ in group.jobs]  # None: dropped since it was pinned
        for (index, job, parts, _), (stored, counter), partition_print in zip(wanted, streams, prints, strict=True):
            still = {part.name for part in active.get(job.table.key, {}).get(job.partition, ())}
            if not {part.name for part in parts} <= still:
                self.tally.add(retries=1)
                log.info("clickhouse.partition.moved", table=job.table.display, partition=job.partition, attempt=1)
                results[index] = self._export_pinned(job, again=True)
                continue
            rows = self._counted(job, counter, partition_print[0])
            results[index] = self._done(job, stored, parts, partition_print, rows, pinned=True)
        return results

    def _check_still_there(self, catalog: Catalog) -> None:
        present = existing_tables(self.sql, catalog.databases)
        gone = [table.display for table in catalog.tables if table.key not in present]
        if gone:
            raise SourceError(
                f"{', '.join(gone)} disappeared during the backup (dropped or renamed?); nothing was committed: "
                "run the backup again"
            )


def _now() -> datetime:
    return datetime.now(UTC)


def _empty_print(table: Table) -> TablePrint:
    return TablePrint(table.database, table.name, table.columns, table.has_partitions, via=table.owner)


# ---- restore ------------------------------------------------------------------------------------
