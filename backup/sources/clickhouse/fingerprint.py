"""Fingerprints of ClickHouse tables and their comparison (pure, no I/O).

A fingerprint is, per table and partition, ``count()`` and ``sum(<row hash>)`` computed by the
server (the row hash is ``sql.row_hash``): equal for equal multisets of rows whatever
their order or part layout, different when any value of any row differs. Sums are modulo 2**64.

In a manifest::

    {"method": "...", "server_version": "18.16.1", "strategy": "logical",
     "tables": [{"database": "features", "table": "events", "rows": 1000, "hash": 123,
                 "partitions": {"202611": [1000, 123]}, "unpinned": []}]}

A table exported whole (Log, Memory...) has the single partition ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backup.sources.base import Verdict
from backup.sources.clickhouse.sql import HASH_METHOD, display_name

HASH_MODULUS = 2**64
WHOLE_TABLE = ""
_MAX_DIFFERENCES = 200

PartitionPrint = tuple[int, int]  # (rows, hash)
TableKey = tuple[str, str]  # (database, table)


@dataclass
class TablePrint:
    """One table's fingerprint: per partition (rows, hash); ``unpinned`` partitions changed while
    they were read and could not be pinned (their print may not describe the exported rows)."""

    database: str
    table: str
    columns: tuple[tuple[str, str], ...]  # what the row hash covers: (name, type)
    partitioned: bool  # printed per _partition_id, else as the one pseudo partition ""
    via: str | None = None  # a materialized view's storage is read (and restored) through the view
    partitions: dict[str, PartitionPrint] = field(default_factory=dict)
    unpinned: set[str] = field(default_factory=set)

    @property
    def key(self) -> TableKey:
        return self.database, self.table

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.partitions.values())

    @property
    def hash(self) -> int:
        return sum(digest for _, digest in self.partitions.values()) % HASH_MODULUS

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "table": self.table,
            "rows": self.rows,
            "hash": self.hash,
            "columns": [list(column) for column in self.columns],
            "partitioned": self.partitioned,
            "via": self.via,
            "partitions": {pid: [rows, digest] for pid, (rows, digest) in sorted(self.partitions.items())},
            "unpinned": sorted(self.unpinned),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TablePrint:
        partitions = {pid: (int(value[0]), int(value[1])) for pid, value in doc.get("partitions", {}).items()}
        columns = tuple((str(name), str(kind)) for name, kind in doc.get("columns", []))
        return cls(
            doc["database"],
            doc["table"],
            columns,
            bool(doc.get("partitioned")),
            doc.get("via"),
            partitions,
            set(doc.get("unpinned", [])),
        )


def fingerprint_document(
    prints: Iterable[TablePrint], *, server_version: str, strategy: str, held_back: Mapping[TableKey, str]
) -> dict[str, Any]:
    """The manifest's ``fingerprint`` dict. ``held_back`` tables are in the snapshot but a restore
    does not recreate them by itself (see catalog.held_back): verification skips them."""
    tables = sorted(prints, key=lambda table: table.key)
    return {
        "method": HASH_METHOD,
        "server_version": server_version,
        "strategy": strategy,
        "tables": [table.to_json() for table in tables],
        "held_back": [{"database": db, "table": name, "reason": why} for (db, name), why in sorted(held_back.items())],
    }


def held_back_tables(document: Mapping[str, Any]) -> dict[TableKey, str]:
    return {(doc["database"], doc["table"]): doc.get("reason", "") for doc in document.get("held_back", [])}


def table_prints(document: Mapping[str, Any]) -> dict[TableKey, TablePrint]:
    """The tables of a manifest's fingerprint, by (database, table)."""
    prints = (TablePrint.from_json(doc) for doc in document.get("tables", []))
    return {table.key: table for table in prints}


def partition_label(table: str, partition: str) -> str:
    return table if partition == WHOLE_TABLE else f"{table} partition {partition}"


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    differences: list[str]
    unverifiable: list[str]  # differences in partitions that were not pinned at backup time
    tables: int
    partitions: int
    rows: int


def compare(
    expected: Mapping[TableKey, TablePrint], actual: Mapping[TableKey, TablePrint | str], *, shown: Mapping[TableKey, str]
) -> Comparison:
    """Compare the snapshot's prints with the restored tables'.

    ``actual`` holds, per expected table, its print on the target or why it could not be taken (a
    message: missing table...). ``shown`` names each table as the report should (the target's name).
    A difference in a partition the snapshot could not pin is "unverifiable", not a mismatch."""
    differences: list[str] = []
    unverifiable: list[str] = []
    partitions = rows = 0
    for key, want in sorted(expected.items()):
        name = shown.get(key, display_name(*key))
        got = actual.get(key, "was not restored")
        partitions += len(want.partitions)
        rows += want.rows
        if isinstance(got, str):
            differences.append(f"{name}: {got}")
            continue
        for pid in sorted(want.partitions.keys() | got.partitions.keys()):
            problem = _partition_difference(want.partitions.get(pid), got.partitions.get(pid))
            if problem:
                target = unverifiable if pid in want.unpinned else differences
                target.append(f"{partition_label(name, pid)}: {problem}")
    verdict = Verdict.MISMATCH if differences else Verdict.UNVERIFIED if unverifiable else Verdict.MATCH
    return Comparison(
        verdict, differences[:_MAX_DIFFERENCES], unverifiable[:_MAX_DIFFERENCES], len(expected), partitions, rows
    )


def _partition_difference(want: PartitionPrint | None, got: PartitionPrint | None) -> str:
    if want == got or (want is None and got == (0, 0)) or (got is None and want == (0, 0)):
        return ""
    if got is None:
        return f"missing (snapshot has {want[0] if want else 0} rows)"
    if want is None:
        return f"not in the snapshot ({got[0]} rows restored)"
    count = f"count {want[0]} vs {got[0]}" if want[0] != got[0] else f"count {want[0]} equal"
    digest = ", hash differs" if want[1] != got[1] else ""
    return count + digest


def changed_fraction(previous: Mapping[TableKey, TablePrint], current: Mapping[TableKey, TablePrint]) -> float | None:
    """Share of the previous snapshot's rows that sit in partitions rewritten or gone since.

    A partition counts as rewritten when its hash changed while its row count did not grow: appends
    (the normal life of a feature store) grow a partition; mass deletion, ransomware or a bad
    rewrite do not. New partitions do not count. None when the previous snapshot had no rows."""
    total = changed = 0
    for key, before in previous.items():
        after = current.get(key)
        for pid, (rows, digest) in before.partitions.items():
            total += rows
            now = after.partitions.get(pid) if after else None
            if now is None or (now[1] != digest and now[0] <= rows):
                changed += rows
    return changed / total if total else None
