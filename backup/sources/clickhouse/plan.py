"""Which partitions of a logical backup are exported, and how: the previous snapshot's entry reused
when nothing changed, small partitions of one table grouped into batches (one export and one
fingerprint query each), small partitions of different tables (many small tables) into groups (one
export each, one fingerprint query and one parts check for the group), the rest one export each.
Pure: no server, no repository."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backup.repository.manifest import Entry
from backup.sources.clickhouse.catalog import Part, PartSet, Table
from backup.sources.clickhouse.fingerprint import WHOLE_TABLE, TableKey, partition_label
from backup.sources.clickhouse.native_rows import UncountableType, layout
from backup.sources.clickhouse.sql import TableRole, row_hash

SMALL_PARTITION = 4 * 2**20
"""Uncompressed bytes up to which a partition is exported in a batch with others of its table."""
BATCH_BYTES = 16 * 2**20
"""Uncompressed bytes of one batch at most: a batch's export is held in memory until it is split."""
BATCH_PARTS = 2000
"""Parts of one batch at most: its queries name every one (the server's max_query_size is 256 KiB)."""
GROUP_JOBS = 64
"""Partitions of different tables in one group at most (one fingerprint query, one parts check)."""
GROUP_QUERY_CHARS = 128 * 1024
"""Characters of a group's fingerprint query at most (the server's max_query_size is 256 KiB)."""


@dataclass(frozen=True)
class PartitionJob:
    table: Table
    partition: str  # WHOLE_TABLE for tables without partitions

    @property
    def label(self) -> str:
        return partition_label(self.table.display, self.partition)


@dataclass(frozen=True)
class ExportPlan:
    reused: list[Entry]
    jobs: list[PartitionJob]


@dataclass(frozen=True)
class Batch:
    """Small partitions of one table exported and fingerprinted together, one query each."""

    table: Table
    jobs: tuple[PartitionJob, ...]

    @property
    def label(self) -> str:
        return f"{self.table.display} partitions {self.jobs[0].partition}..{self.jobs[-1].partition}"


@dataclass(frozen=True)
class TableGroup:
    """Small partitions of different tables: each exported by its own query, all fingerprinted in one
    query (``UNION ALL``) and their parts checked in one read of system.parts."""

    jobs: tuple[PartitionJob, ...]

    @property
    def label(self) -> str:
        return f"{self.jobs[0].label} and {len(self.jobs) - 1} more"


def batch_jobs(
    jobs: Sequence[PartitionJob],
    sizes: Mapping[TableKey, Mapping[str, int]],
    parts: Mapping[TableKey, Mapping[str, PartSet]],
    *,
    parallel: int,
) -> list[PartitionJob | Batch | TableGroup]:
    """``jobs`` with the small partitions of each table (SMALL_PARTITION) grouped into batches of up to
    BATCH_BYTES and BATCH_PARTS, and into at least ``parallel`` batches per table where there are that many. Whole
    tables, big partitions and tables whose columns the splitter cannot follow stay single jobs; single small partitions left
    then are put into groups (group_jobs)."""
    items: list[PartitionJob | Batch] = []
    small: dict[TableKey, list[PartitionJob]] = {}
    for job in jobs:
        size = sizes.get(job.table.key, {}).get(job.partition)
        if job.partition == WHOLE_TABLE or size is None or size > SMALL_PARTITION or not splittable(job.table):
            items.append(job)
        else:
            small.setdefault(job.table.key, []).append(job)
    for key, group in small.items():
        most = max(1, math.ceil(len(group) / max(parallel, 1)))
        weighed = [(job, sizes[key][job.partition], len(parts.get(key, {}).get(job.partition, ()))) for job in group]
        items.extend(_batch(batch) for batch in _fill(weighed, most=most, bound=BATCH_PARTS))
    return group_jobs(items, sizes, parts, parallel=parallel)


def group_jobs(
    items: Sequence[PartitionJob | Batch],
    sizes: Mapping[TableKey, Mapping[str, int]],
    parts: Mapping[TableKey, Mapping[str, PartSet]],
    *,
    parallel: int,
) -> list[PartitionJob | Batch | TableGroup]:
    """``items`` with their single small partitions (SMALL_PARTITION, pinned by parts; those left
    alone by batching, such as the one partition of each of many small tables) put into groups of
    up to GROUP_JOBS, GROUP_QUERY_CHARS and BATCH_BYTES, at least ``parallel`` groups where there are
    that many partitions. Batches, whole tables and big partitions stay as they are."""
    kept: list[PartitionJob | Batch | TableGroup] = []
    small: list[tuple[PartitionJob, int, int]] = []
    for item in items:
        size = sizes.get(item.table.key, {}).get(item.partition) if isinstance(item, PartitionJob) else None
        if not isinstance(item, PartitionJob) or size is None or size > SMALL_PARTITION or not item.table.columns:
            kept.append(item)
            continue
        pinned = parts.get(item.table.key, {}).get(item.partition, ())
        text = len(row_hash(item.table.columns)) + len(item.table.sql) + sum(len(part.name) + 4 for part in pinned) + 200
        small.append((item, size, text))
    most = min(GROUP_JOBS, max(1, math.ceil(len(small) / max(parallel, 1))))
    kept.extend(_group(group) for group in _fill(small, most=most, bound=GROUP_QUERY_CHARS))
    return kept


def _fill(weighed: Sequence[tuple[PartitionJob, int, int]], *, most: int, bound: int) -> list[list[PartitionJob]]:
    """``weighed`` (each job with its uncompressed bytes and its weight against ``bound``: parts named,
    query characters) cut in order into runs of at most ``most`` jobs, BATCH_BYTES bytes and ``bound``
    weight; a job that alone exceeds a limit makes a run of its own."""
    runs: list[list[PartitionJob]] = []
    run: list[PartitionJob] = []
    held = weight = 0
    for job, size, cost in weighed:
        if run and (len(run) >= most or held + size > BATCH_BYTES or weight + cost > bound):
            runs.append(run)
            run, held, weight = [], 0, 0
        run.append(job)
        held += size
        weight += cost
    if run:
        runs.append(run)
    return runs


def _group(jobs: list[PartitionJob]) -> PartitionJob | TableGroup:
    return jobs[0] if len(jobs) == 1 else TableGroup(tuple(jobs))


def _batch(jobs: list[PartitionJob]) -> PartitionJob | Batch:
    return jobs[0] if len(jobs) == 1 else Batch(jobs[0].table, tuple(jobs))


def splittable(table: Table) -> bool:
    """Whether a batched export of ``table`` can be split into partitions (every column type's layout
    is known to the Native reader)."""
    try:
        for _, column_type in table.columns:
            layout(column_type)
    except UncountableType:
        return False
    return bool(table.columns)


PreviousExports = Mapping[tuple[str, str, str], Entry]  # (database, table, partition) -> data entry


def plan_exports(
    tables: Sequence[Table], parts: Mapping[TableKey, Mapping[str, PartSet]], previous: PreviousExports
) -> ExportPlan:
    """Which partitions reuse the previous snapshot's entry and which must be exported.

    Tables without partitions are always exported (nothing proves they did not change)."""
    reused: list[Entry] = []
    jobs: list[PartitionJob] = []
    for table in tables:
        if table.role is not TableRole.DATA:
            continue
        if not table.has_partitions:
            jobs.append(PartitionJob(table, WHOLE_TABLE))
            continue
        for partition, partset in sorted(parts.get(table.key, {}).items()):
            old = previous.get((table.database, table.name, partition))
            if old is not None and reusable(old, table, partset):
                reused.append(old)
            else:
                jobs.append(PartitionJob(table, partition))
    return ExportPlan(reused, jobs)


def reusable(entry: Entry, table: Table, parts: PartSet) -> bool:
    """Whether ``entry`` (a previous export) still holds exactly this partition's rows: it was pinned,
    the table definition is the same, and so is the set of active parts."""
    meta = entry.meta
    if meta.get("pinned") is not True or meta.get("schema") != table.schema_id:
        return False
    return tuple(Part.from_json(value) for value in meta.get("parts", [])) == parts
