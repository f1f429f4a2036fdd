"""Fingerprints of ClickHouse tables and their comparison (pure, no I/O).

A fingerprint is, per table and partition, ``count()`` and ``sum(<row hash>)`` computed by the
server (the row hash is ``sql.row_hash``): equal for equal multisets of rows whatever
their order or part layout, different when any value of any row differs. Sums are modulo 2**64.

In a manifest::

    {"method": "...", "server_version": "18.16.1", "strategy": "logical",
     "tables": [{"database": "features", "table": "events", "rows": 1000, "hash": 123,
                 "partitions": {"202611": [1000, 123]}, "unpinned": []}]}

A table exported whole (Log, Memory...) has the single partition ``""``.

``"definitions"`` holds, per table, view, materialized view and dictionary, what defines it as the
server described it at backup time (``Definition``): columns (name, type, default kind and
expression), ``engine_full``, partition and sorting keys, and a view's query. Verification compares
them, database names retargeted and spelling normalized, with the restored copy's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backup.sources.base import Verdict
from backup.sources.clickhouse.ddl import canonical, canonical_engine, rewrite_fragment
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
    prints: Iterable[TablePrint],
    *,
    server_version: str,
    strategy: str,
    held_back: Mapping[TableKey, str],
    definitions: Iterable[Definition] | None = None,
) -> dict[str, Any]:
    """The manifest's ``fingerprint`` dict. ``held_back`` tables are in the snapshot but a restore
    does not recreate them by itself (see catalog.held_back): verification skips them.
    ``definitions`` None: none were recorded (verification then says so instead of comparing)."""
    tables = sorted(prints, key=lambda table: table.key)
    document: dict[str, Any] = {
        "method": HASH_METHOD,
        "server_version": server_version,
        "strategy": strategy,
        "tables": [table.to_json() for table in tables],
        "held_back": [{"database": db, "table": name, "reason": why} for (db, name), why in sorted(held_back.items())],
    }
    if definitions is not None:
        document["definitions"] = [item.to_json() for item in sorted(definitions, key=lambda item: item.key)]
    return document


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


# ---- definitions ------------------------------------------------------------------------------------

_KIND_WORDS = {
    "View": "view",
    "MaterializedView": "materialized view",
    "LiveView": "live view",
    "WindowView": "window view",
    "Dictionary": "dictionary",
}
_REPLICATED = "Replicated"
_SHOWN = 160  # characters of a differing definition in a report line

Column = tuple[str, str, str, str]  # name, type, default kind, default expression


@dataclass(frozen=True)
class Definition:
    """What defines one table, view, materialized view or dictionary, as system.tables and
    system.columns describe it (``query``: what follows a view's columns, see ddl.view_query)."""

    database: str
    table: str
    engine: str
    columns: tuple[Column, ...]
    engine_full: str = ""
    partition_key: str = ""
    sorting_key: str = ""
    query: str = ""
    owner: str | None = None  # the materialized view whose storage this table is

    @property
    def key(self) -> TableKey:
        return self.database, self.table

    @property
    def kind(self) -> str:
        return _KIND_WORDS.get(self.engine, "table")

    @property
    def label(self) -> str:
        """How a report names it: ``table events``, ``view daily``, ``storage of materialized view mv``."""
        return f"storage of materialized view {self.owner}" if self.owner else f"{self.kind} {self.table}"

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "table": self.table,
            "engine": self.engine,
            "columns": [list(column) for column in self.columns],
            "engine_full": self.engine_full,
            "partition_key": self.partition_key,
            "sorting_key": self.sorting_key,
            "query": self.query,
            "owner": self.owner,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Definition:
        columns = tuple((str(a), str(b), str(c), str(d)) for a, b, c, d in doc.get("columns", []))
        return cls(
            doc["database"],
            doc["table"],
            doc["engine"],
            columns,
            doc.get("engine_full", ""),
            doc.get("partition_key", ""),
            doc.get("sorting_key", ""),
            doc.get("query", ""),
            doc.get("owner"),
        )

    def retargeted(self, databases: Iterable[str], target: str) -> Definition:
        """This definition as a restore into database ``target`` recreates it (clickhouse_ddl's
        rewriting: names of ``databases`` retargeted, Replicated engines made plain), spelled canonically."""
        names = set(databases)

        def clause(text: str) -> str:
            return rewrite_fragment(text, databases=names, target=target)

        engine = self.engine
        if engine.startswith(_REPLICATED) and engine.endswith("MergeTree"):
            engine = engine[len(_REPLICATED) :]
        columns = tuple((name, kind, default, clause(expression)) for name, kind, default, expression in self.columns)
        return Definition(
            target,
            self.table,
            engine,
            columns,
            rewrite_fragment(self.engine_full, databases=names, target=target, engine=True),
            clause(self.partition_key),
            clause(self.sorting_key),
            clause(self.query),
            self.owner,
        ).spelled()

    def spelled(self) -> Definition:
        """This definition in canonical spelling (whitespace, quotes), so that two spellings compare equal."""
        columns = tuple((name, kind, default, canonical(expr)) for name, kind, default, expr in self.columns)
        return Definition(
            self.database,
            self.table,
            self.engine,
            columns,
            canonical_engine(self.engine_full),
            canonical(self.partition_key),
            canonical(self.sorting_key),
            canonical(self.query),
            self.owner,
        )


def snapshot_definitions(document: Mapping[str, Any]) -> list[Definition] | None:
    """The definitions a manifest's fingerprint records; None for a snapshot that records none."""
    if "definitions" not in document:
        return None
    return [Definition.from_json(doc) for doc in document["definitions"]]


def definition_differences(expected: Iterable[Definition], actual: Iterable[Definition]) -> list[str]:
    """Every difference between the snapshot's definitions (retargeted to the copy's database) and the
    copy's, one line each, named (``table events: column user: String in the snapshot, ...``).

    A materialized view's storage is matched by its view (its name may hold a UUID)."""
    want = {_slot(item): item for item in expected}
    got = {_slot(item): item for item in actual}
    lines: list[str] = []
    for slot, item in sorted(want.items()):
        found = got.get(slot)
        if found is None:
            lines.append(f"{item.label}: in the snapshot, not in the copy")
        else:
            lines.extend(f"{item.label}: {line}" for line in _object_differences(item, found))
    lines.extend(f"{item.label}: in the copy, not in the snapshot" for slot, item in sorted(got.items()) if slot not in want)
    return lines[:_MAX_DIFFERENCES]


def _slot(item: Definition) -> tuple[str, str]:
    return ("storage", item.owner) if item.owner else ("object", item.table)


def _object_differences(want: Definition, got: Definition) -> list[str]:
    if want.kind != got.kind:
        article = "an" if got.kind[0] in "aeiou" else "a"
        return [f"{article} {got.kind} ({got.engine}) in the copy"]
    lines = []
    if want.engine != got.engine:
        lines.append(f"engine {want.engine} in the snapshot, {got.engine} in the copy")
    lines.extend(_column_differences(want.columns, got.columns))
    keys_equal = True
    for what, wanted, found in (
        ("partition key", want.partition_key, got.partition_key),
        ("sorting key", want.sorting_key, got.sorting_key),
    ):
        if wanted != found:
            keys_equal = False
            lines.append(f"{what} {wanted or '(none)'} in the snapshot, {found or '(none)'} in the copy")
    if want.engine == got.engine and keys_equal and want.engine_full != got.engine_full:
        lines.append(f"engine {_cut(want.engine_full)} in the snapshot, {_cut(got.engine_full)} in the copy")
    if want.query != got.query:
        lines.append(f"definition differs: {_cut(want.query)} in the snapshot, {_cut(got.query)} in the copy")
    return lines


def _column_differences(want: tuple[Column, ...], got: tuple[Column, ...]) -> list[str]:
    wanted = {column[0]: column for column in want}
    found = {column[0]: column for column in got}
    lines = []
    for name, column in wanted.items():
        other = found.get(name)
        if other is None:
            lines.append(f"column {name}: in the snapshot, not in the copy")
        elif other[1] != column[1]:
            lines.append(f"column {name}: {column[1]} in the snapshot, {other[1]} in the copy")
        elif other[2:] != column[2:]:
            lines.append(f"column {name}: {_default(column)} in the snapshot, {_default(other)} in the copy")
    lines.extend(f"column {name}: in the copy, not in the snapshot" for name in found if name not in wanted)
    common = [name for name in wanted if name in found]
    if not lines and common != [name for name in found if name in wanted]:
        lines.append(f"columns in another order: {', '.join(wanted)} in the snapshot, {', '.join(found)} in the copy")
    return lines


def _default(column: Column) -> str:
    return f"{column[2]} {column[3]}" if column[2] else "no default"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
