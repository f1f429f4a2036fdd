"""What a snapshot holds, what changed between two, and what the repository stores (``lifeboat
snapshots ls | diff``, ``lifeboat stats``).

Described generically, from what every kind already records: an entry's name, size and digest, and
the few meta fields a kind fills in when it has them (``rows`` of a ClickHouse partition,
``last_modified`` of an S3 object); a snapshot's census (etcd's key counts by resource, namespace and
prefix; ClickHouse's rows per table) is a map of counts compared name by name. Entries are streamed:
``diff`` keeps one name -> digest map of the first snapshot, ``stats`` one set of chunk ids per source.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from backup.repository.manifest import ChunkRef, Entry, SnapshotHeader
from backup.repository.repository import Repository

_WILDCARDS = frozenset("*?[")


def entry_view(entry: Entry) -> dict[str, Any]:
    """One entry as ``snapshots ls`` shows it: name, size, sha256 and, when its kind records them,
    ``rows`` (a table partition), ``time`` (an object's last modification) and ``type``."""
    view: dict[str, Any] = {"name": entry.name, "size": entry.size, "sha256": entry.sha256}
    for label, key in (("type", "type"), ("rows", "rows"), ("time", "last_modified"), ("storage_class", "storage_class")):
        if entry.meta.get(key) is not None:
            view[label] = entry.meta[key]
    return view


def matches(name: str, pattern: str | None) -> bool:
    """Whether an entry name matches PATTERN: a glob (``data/db/*``), or else the start of a name."""
    if not pattern:
        return True
    if _WILDCARDS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name.startswith(pattern)


def list_entries(repository: Repository, header: SnapshotHeader, pattern: str | None = None) -> Iterator[dict[str, Any]]:
    """The entries of a snapshot that match ``pattern``, streamed, in the order they were stored."""
    for entry in repository.entries(header):
        if matches(entry.name, pattern):
            yield entry_view(entry)


def census_counts(census: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The census as groups of counts: ``{"resources": {"pods": 412, ...}, "totals": {"keys": 900}}``
    (etcd: resources, namespaces, prefixes; other kinds: whatever maps of numbers they record)."""
    groups: dict[str, dict[str, int]] = {}
    for group, value in census.items():
        if isinstance(value, Mapping):
            counts = {str(name): count for name, count in value.items() if _is_count(count)}
            if counts:
                groups[group] = counts
    return groups


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Change:
    name: str
    size_before: int
    size_after: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size_before": self.size_before, "size_after": self.size_after}


@dataclass
class SnapshotDiff:
    """What changed from snapshot ``before`` to ``after``."""

    before: str
    after: str
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: int = 0
    census: list[dict[str, Any]] = field(default_factory=list)  # {"group", "name", "before", "after"}

    def totals(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "added_bytes": sum(item["size"] for item in self.added),
            "removed": len(self.removed),
            "removed_bytes": sum(item["size"] for item in self.removed),
            "changed": len(self.changed),
            "changed_bytes": sum(change.size_after - change.size_before for change in self.changed),
            "unchanged": self.unchanged,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "added": self.added,
            "removed": self.removed,
            "changed": [change.as_dict() for change in self.changed],
            "census": self.census,
            "totals": self.totals(),
        }


def diff_snapshots(repository: Repository, before: SnapshotHeader, after: SnapshotHeader) -> SnapshotDiff:
    """Entries added, removed and changed (another digest or size) from ``before`` to ``after``, and
    every census count that differs. Holds one name -> (digest, size) map of ``before``."""
    old: dict[str, tuple[str, int]] = {entry.name: (entry.sha256, entry.size) for entry in repository.entries(before)}
    diff = SnapshotDiff(before.id, after.id)
    for entry in repository.entries(after):
        known = old.pop(entry.name, None)
        if known is None:
            diff.added.append({"name": entry.name, "size": entry.size})
        elif known != (entry.sha256, entry.size):
            diff.changed.append(Change(entry.name, known[1], entry.size))
        else:
            diff.unchanged += 1
    diff.removed = [{"name": name, "size": size} for name, (_, size) in sorted(old.items())]
    diff.census = census_differences(census_counts(before.census), census_counts(after.census))
    return diff


def census_differences(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
) -> list[dict[str, Any]]:
    """Every count that differs between two censuses, group by group."""
    found = []
    for group in sorted(set(before) | set(after)):
        old, new = before.get(group, {}), after.get(group, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name, 0) != new.get(name, 0):
                found.append({"group": group, "name": name, "before": old.get(name, 0), "after": new.get(name, 0)})
    return found


@dataclass
class UsageFigures:
    """Logical and stored size of some snapshots. ``logical_bytes``: what their entries add up to;
    ``unique_bytes``: the distinct chunks they use (after dedup); ``stored_bytes``: those chunks as
    stored (compressed, encrypted)."""

    snapshots: int = 0
    logical_bytes: int = 0
    chunks: int = 0
    unique_bytes: int = 0
    stored_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "logical_bytes": self.logical_bytes,
            "chunks": self.chunks,
            "unique_bytes": self.unique_bytes,
            "stored_bytes": self.stored_bytes,
            "dedup_ratio": _ratio(self.logical_bytes, self.unique_bytes),
            "compression_ratio": _ratio(self.unique_bytes, self.stored_bytes),
            "space_saving": round(1 - self.stored_bytes / self.logical_bytes, 4) if self.logical_bytes else 0.0,
        }


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


@dataclass
class RepositoryStats:
    sources: dict[str, UsageFigures]
    total: UsageFigures
    chunks_stored: int  # every chunk object in the repository, used or not
    bytes_stored: int
    missing_chunks: int  # referenced but not stored: `lifeboat check` says which

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": [{"source": name, **figures.as_dict()} for name, figures in sorted(self.sources.items())],
            "total": self.total.as_dict(),
            "repository": {
                "chunks_stored": self.chunks_stored,
                "bytes_stored": self.bytes_stored,
                "missing_chunks": self.missing_chunks,
            },
        }


def repository_stats(repository: Repository, headers: Iterable[SnapshotHeader]) -> RepositoryStats:
    """Usage figures of each source of ``headers`` and of all of them together, streaming every
    snapshot's entries once (memory: the chunk references of each source, and the store's listing)."""
    stored = repository.stored_objects()
    per_source: dict[str, tuple[UsageFigures, dict[str, ChunkRef]]] = {}
    for header in headers:
        figures, chunks = per_source.setdefault(header.source, (UsageFigures(), {}))
        figures.snapshots += 1
        figures.logical_bytes += header.size
        chunks.update((ref.id, ref) for ref in header.entries_chunks)
        for entry in repository.entries(header):
            chunks.update((ref.id, ref) for ref in entry.chunks)
    total, every = UsageFigures(), {}
    for figures, chunks in per_source.values():
        _count_chunks(figures, chunks, stored)
        total.snapshots += figures.snapshots
        total.logical_bytes += figures.logical_bytes
        every.update(chunks)
    _count_chunks(total, every, stored)
    return RepositoryStats(
        sources={name: figures for name, (figures, _) in per_source.items()},
        total=total,
        chunks_stored=sum(1 for key in stored if key.startswith("chunks/")) + sum(1 for ref in every.values() if ref.pack),
        bytes_stored=sum(stored.values()),
        missing_chunks=sum(1 for ref in every.values() if ref.key not in stored),
    )


def _count_chunks(figures: UsageFigures, chunks: Mapping[str, ChunkRef], stored: Mapping[str, int]) -> None:
    """A packed chunk's stored bytes are its range in the pack; a chunk object's, the object's size."""
    figures.chunks = len(chunks)
    figures.unique_bytes = sum(ref.size for ref in chunks.values())
    figures.stored_bytes = sum(ref.length if ref.pack else stored.get(ref.key, 0) for ref in chunks.values())
