"""Backup and restore runs: the orchestration around a source, written once for every kind.

``run_backup``: previous snapshot -> shared lock -> source.snapshot -> anomaly guard -> commit.
``run_restore``: find the snapshot -> source.parse_target -> source.restore (under a shared lock).

A sharded run (``executor.kubernetes.shards``; backup/repository/parts.py) is N ``run_part_backup``
calls, each in its own Job, then one ``merge_parts``: the parts' entries are listed again in the
order the kind's snapshots keep, their fingerprints and censuses merged by the kind's rule
(``PART_MERGES``), the anomaly guard run on the whole, and ONE snapshot committed; no data moves.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from backup.repository.manifest import Entry, SnapshotHeader, SnapshotStatus
from backup.repository.parts import PartOf
from backup.repository.repository import Repository, SnapshotNotFound, WriteStats
from backup.sources import make_source
from backup.sources.base import Progress, RestoreOptions, RestoreResult, SnapshotOutcome
from policies.errors import LifeboatError, SourceError
from policies.model import SHARDABLE_KINDS, AnomalyGuard, SourceSettings

log = structlog.get_logger(__name__)
PART_META = "part"  # a part manifest's meta: its run, shard, base snapshot, figures and write stats
_LISTED_EXPORTS = 100  # as clickhouse.py lists them


@dataclass(frozen=True)
class BackupResult:
    header: SnapshotHeader
    stats: WriteStats
    figures: dict[str, Any]
    seconds: float
    anomalies: list[str]

    def as_dict(self) -> dict[str, Any]:
        """One item of ``backup run --json``'s ``snapshots`` list."""
        return {
            "id": self.header.id,
            "source": self.header.source,
            "kind": self.header.kind,
            "status": self.header.status,
            "started": self.header.started.isoformat(),
            "finished": self.header.finished.isoformat(),
            "seconds": round(self.seconds, 3),
            "bytes_read": self.stats.bytes_read,
            "bytes_stored": self.stats.bytes_stored,
            "chunks_new": self.stats.chunks_new,
            "chunks_reused": self.stats.chunks_reused,
            "size": self.header.size,
            "entries": self.header.entry_count,
            "anomalies": self.anomalies,
            **self.figures,
        }


def run_backup(
    repository: Repository,
    name: str,
    settings: SourceSettings,
    *,
    stale_after: float = 1800.0,
    progress: Progress | None = None,
) -> BackupResult:
    """Take one snapshot of source ``name``; raises SourceError (nothing committed) on failure."""
    source = make_source(name, settings)
    started = time.monotonic()
    previous = _previous(repository, name)
    with repository.begin_snapshot(name, settings.kind, stale_after=stale_after) as writer:
        outcome = source.snapshot(writer, previous, progress=progress)
        anomalies = anomalies_against(previous, outcome, settings.anomaly)
        status: SnapshotStatus = "suspicious" if anomalies else "good"
        meta = {**outcome.meta, "anomalies": anomalies} if anomalies else outcome.meta
        header = writer.commit(status=status, fingerprint=outcome.fingerprint, census=outcome.census, meta=meta)
    seconds = time.monotonic() - started
    if anomalies:
        log.warning("snapshot.suspicious", source=name, snapshot=header.id, anomalies=anomalies)
    return BackupResult(header, writer.stats, outcome.figures, seconds, anomalies)


def _previous(repository: Repository, name: str) -> SnapshotHeader | None:
    """The newest snapshot to compare with and reuse from: the newest good one.

    A suspicious snapshot is never the base: after a ransomware run, the next snapshot is
    compared with the last known-good state, so the alarm keeps ringing until someone looks."""
    try:
        return repository.find_snapshot(name)
    except SnapshotNotFound:
        return None


def anomalies_against(previous: SnapshotHeader | None, outcome: SnapshotOutcome, guard: AnomalyGuard) -> list[str]:
    """Why a new snapshot looks like mass deletion or ransomware compared with ``previous``."""
    if previous is None:
        return []
    found = []
    before = previous.census.get("totals", {})
    after = outcome.census.get("totals", {})
    for what, old in before.items():
        new = after.get(what)
        if isinstance(old, int | float) and isinstance(new, int | float) and old > 0 and (old - new) / old > guard.shrink:
            found.append(
                f"{what} shrank by {100 * (old - new) / old:.0f}% ({old} -> {new}), over the {guard.shrink:.0%} guard"
            )
    changed = outcome.census.get("changed_fraction")
    if isinstance(changed, int | float) and changed > guard.changed:
        found.append(f"{changed:.0%} of items changed content at once, over the {guard.changed:.0%} guard")
    return found


# ---- sharded runs: parts and their merge ------------------------------------------------------------


def run_part_backup(
    repository: Repository,
    name: str,
    settings: SourceSettings,
    part: PartOf,
    *,
    stale_after: float = 1800.0,
    progress: Progress | None = None,
) -> BackupResult:
    """Take shard ``part.shard`` of source ``name`` as a part of sharded run ``part.run``.

    Compared with, and reusing, the source's newest good snapshot like a whole run. No anomaly guard:
    a part's census is a share (``merge_parts`` guards the whole). Its figures and write stats are
    kept in its manifest for the merge. Raises SourceError (a kind that does not shard; a failed
    snapshot: nothing committed)."""
    if settings.kind not in SHARDABLE_KINDS:
        raise SourceError(f"source '{name}' is {settings.kind}: only s3 and clickhouse sources can be sharded")
    source = make_source(name, settings)
    started = time.monotonic()
    previous = _previous(repository, name)
    with repository.begin_part(name, settings.kind, part, stale_after=stale_after) as writer:
        outcome = source.snapshot(writer, previous, progress=progress)
        record = {
            **part.as_dict(),
            "previous": previous.id if previous else None,
            "figures": outcome.figures,
            "stats": _stats_document(writer.stats),
        }
        meta = {**outcome.meta, PART_META: record}
        header = writer.commit(fingerprint=outcome.fingerprint, census=outcome.census, meta=meta)
    figures = {**outcome.figures, "part_of": part.run, "shard": str(part.shard)}
    return BackupResult(header, writer.stats, figures, time.monotonic() - started, [])


def merge_parts(
    repository: Repository, name: str, settings: SourceSettings, run: str, *, stale_after: float = 1800.0
) -> BackupResult:
    """ONE snapshot of ``name`` from the parts of sharded run ``run``, timed from the earliest part's
    start; the run's parts are deleted afterwards, unless the merge came too early.

    Raises PartsMissing when a shard has no part yet (the others are kept: a later merge may find
    them all), SourceError when the parts disagree, and what a commit raises (StoreError...):
    nothing is committed then."""
    merge = PART_MERGES.get(settings.kind)
    if merge is None:
        raise SourceError(f"source '{name}' is {settings.kind}: only s3 and clickhouse sources can be sharded")
    try:
        with repository.lock("shared", f"merge {name} run {run}", stale_after=stale_after):
            parts = _complete_parts(repository, name, run, settings.kind)
            previous = _previous(repository, name)
            first = min(part.started for part in parts)
            with repository.begin_snapshot(name, settings.kind, stale_after=stale_after, started=first) as writer:
                outcome = merge(Merging(previous, parts, [repository.entries(part) for part in parts], writer.add))
                anomalies = anomalies_against(previous, outcome, settings.anomaly)
                status: SnapshotStatus = "suspicious" if anomalies else "good"
                shards = {"run": run, "count": len(parts), "parts": [part.id for part in parts]}
                meta = {**outcome.meta, "shards": shards} | ({"anomalies": anomalies} if anomalies else {})
                header = writer.commit(status=status, fingerprint=outcome.fingerprint, census=outcome.census, meta=meta)
    except PartsMissing:
        raise
    except BaseException:
        discard_parts(repository, name, run)
        raise
    discard_parts(repository, name, run)
    stats = WriteStats()
    for document in [*(part.meta[PART_META]["stats"] for part in parts), _stats_document(writer.stats)]:
        stats.add(**document)
    if anomalies:
        log.warning("snapshot.suspicious", source=name, snapshot=header.id, anomalies=anomalies)
    seconds = (header.finished - header.started).total_seconds()
    return BackupResult(header, stats, {**outcome.figures, "shards": len(parts)}, seconds, anomalies)


def discard_parts(repository: Repository, name: str, run: str) -> int:
    """Delete the parts of run ``run`` of ``name`` (best effort: prune removes what is left once past
    its grace period); returns how many were deleted."""
    deleted = 0
    try:
        for stored in repository.list_parts(name, run):
            repository.delete_part(stored)
            deleted += 1
    except LifeboatError as exc:
        log.warning("parts.not_discarded", source=name, run=run, error=str(exc))
    if deleted:
        log.info("parts.discarded", source=name, run=run, parts=deleted)
    return deleted


class PartsMissing(SourceError):
    """A merge came before every shard of the run had its part."""


def _complete_parts(repository: Repository, name: str, run: str, kind: str) -> list[SnapshotHeader]:
    """The headers of every shard's part, by shard; SourceError naming what is missing or wrong."""
    stored = repository.list_parts(name, run)
    if not stored:
        raise SourceError(f"sharded run {run} of '{name}' has no part: no shard succeeded; nothing committed")
    counts = sorted({item.part.shard.count for item in stored})
    if len(counts) > 1:
        raise SourceError(f"the parts of run {run} of '{name}' disagree on the shard count ({counts}); nothing committed")
    present = {item.part.shard.index for item in stored}
    missing = [f"{index}/{counts[0]}" for index in range(1, counts[0] + 1) if index not in present]
    if missing:
        raise PartsMissing(
            f"shard {', '.join(missing)} of run {run} of '{name}' left no part (it failed or has not run yet); nothing "
            "committed, the other parts are kept for a merge once every shard has run (prune removes them after "
            "repository.prune.grace)"
        )
    parts = [repository.read_part(item) for item in stored]
    if wrong := sorted({part.kind for part in parts} - {kind}):
        raise SourceError(f"parts of run {run} of '{name}' are of kind {', '.join(wrong)}, not {kind}")
    return parts


def _stats_document(stats: WriteStats) -> dict[str, int]:
    return {"read": stats.bytes_read, "stored": stats.bytes_stored, "new": stats.chunks_new, "reused": stats.chunks_reused}


@dataclass(frozen=True)
class Merging:
    """What a kind's merge gets: the newest good snapshot before the merge (the anomaly guard's and
    the changed share's base), the parts by shard, their entries, and ``add`` for the merged entries
    (in the order the kind's snapshots keep)."""

    previous: SnapshotHeader | None
    parts: list[SnapshotHeader]
    streams: list[Iterator[Entry]]
    add: Callable[[Entry], None]


def _merge_s3(merging: Merging) -> SnapshotOutcome:
    """Entries in (bucket, key) order, as one run lists them: the next run's incremental merge join
    depends on it, and shards interleave buckets. Counts summed, buckets side by side; the changed
    share is the shards' changed objects over the base's (each shard compared with that same base)."""
    last: tuple[str, str] | None = None
    for entry in heapq.merge(*merging.streams, key=_bucket_and_key):
        if _bucket_and_key(entry) == last:
            raise SourceError(f"object {entry.name} is in two parts of the run; nothing committed")
        last = _bucket_and_key(entry)
        merging.add(entry)
    parts, previous = merging.parts, merging.previous
    totals = _add_up(part.census.get("totals", {}) for part in parts)
    census: dict[str, Any] = {"totals": totals, "buckets": _side_by_side(part.census.get("buckets", {}) for part in parts)}
    same_base = previous is not None and all(part.meta[PART_META]["previous"] == previous.id for part in parts)
    if previous is not None and same_base and previous.entry_count and all("changed_fraction" in p.census for p in parts):
        changed = sum(int(part.meta[PART_META]["figures"].get("objects_changed", 0)) for part in parts)
        census["changed_fraction"] = round(changed / previous.entry_count, 4)
    fingerprint = {
        **_add_up({key: part.fingerprint.get(key, 0) for key in ("objects", "bytes")} for part in parts),
        "buckets": _side_by_side(part.fingerprint.get("buckets", {}) for part in parts),
    }
    meta = _combine([_own_meta(part) for part in parts])
    meta["buckets"] = sorted(meta.get("buckets", []))
    return SnapshotOutcome(fingerprint, census, meta, _combine([part.meta[PART_META]["figures"] for part in parts]))


def _bucket_and_key(entry: Entry) -> tuple[str, str]:
    return str(entry.meta.get("bucket", "")), str(entry.meta.get("key", ""))


def _merge_clickhouse(merging: Merging) -> SnapshotOutcome:
    """Entries part after part (a restore plans from all of them, in any order); table prints side by
    side. Held-back tables are worked out again over ALL tables (a view of one shard may read a queue
    table of another), and the changed share over the base's prints, as clickhouse._outcome does."""
    # Imported when used, as backup.sources imports a kind's module: other kinds do not pay for it.
    from backup.sources.clickhouse_catalog import Table, held_back
    from backup.sources.clickhouse_fingerprint import (
        changed_fraction,
        fingerprint_document,
        snapshot_definitions,
        table_prints,
    )
    from backup.sources.clickhouse_logical import merge_windows
    from backup.sources.clickhouse_sql import HASH_METHOD

    tables = []
    for entry in itertools.chain.from_iterable(merging.streams):
        merging.add(entry)
        if entry.meta.get("type") == "table":
            tables.append(Table.from_meta(entry.meta))
    parts, previous = merging.parts, merging.previous
    prints = {key: table for part in parts for key, table in table_prints(part.fingerprint).items()}
    held = held_back(tables)
    first = parts[0].fingerprint
    recorded = [snapshot_definitions(part.fingerprint) for part in parts]
    fingerprint = fingerprint_document(
        prints.values(),
        server_version=first.get("server_version", ""),
        strategy=first.get("strategy", ""),
        held_back=held,
        definitions=None if None in recorded else [item for found in recorded for item in found or ()],
    )
    census: dict[str, Any] = {
        "totals": _add_up(part.census.get("totals", {}) for part in parts),
        "tables": _side_by_side(part.census.get("tables", {}) for part in parts),
    }
    if previous is not None and previous.fingerprint.get("method") == HASH_METHOD:
        changed = changed_fraction(table_prints(previous.fingerprint), prints)
        if changed is not None:
            census["changed_fraction"] = round(changed, 4)
    meta = _combine([_own_meta(part) for part in parts])
    meta["held_back"] = [{"table": ".".join(key), "reason": why} for key, why in sorted(held.items())]
    window = merge_windows(part.meta["consistency"] for part in parts if "consistency" in part.meta)
    if window is not None:  # each part pinned its tables on its own: the whole spans them all
        meta["consistency"] = window
    figures = _combine([part.meta[PART_META]["figures"] for part in parts])
    figures["exported"] = sorted(figures.get("exported", []))[:_LISTED_EXPORTS]
    return SnapshotOutcome(fingerprint, census, meta, figures)


PART_MERGES: dict[str, Callable[[Merging], SnapshotOutcome]] = {
    "s3": _merge_s3,
    "clickhouse": _merge_clickhouse,
}


def _own_meta(part: SnapshotHeader) -> dict[str, Any]:
    return {key: value for key, value in part.meta.items() if key != PART_META}


def _add_up(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers summed key by key."""
    total: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            total[key] = total.get(key, 0) + value
    return total


def _side_by_side(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Dicts of disjoint keys (buckets, tables: each in one shard) as one."""
    return {key: value for document in documents for key, value in document.items()}


def _combine(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Meta or figures of the parts as one: numbers summed, lists concatenated without repeats, dicts
    side by side, anything else (strategy, endpoint...) the first part's."""
    combined: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            if key not in combined:
                combined[key] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
            elif isinstance(value, int | float) and not isinstance(value, bool) and _is_number(combined[key]):
                combined[key] += value
            elif isinstance(value, list) and isinstance(combined[key], list):
                seen = {json.dumps(item, sort_keys=True, default=str) for item in combined[key]}
                combined[key] += [item for item in value if json.dumps(item, sort_keys=True, default=str) not in seen]
            elif isinstance(value, dict) and isinstance(combined[key], dict):
                combined[key].update(value)
    return combined


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run_restore(
    repository: Repository,
    name: str,
    settings: SourceSettings,
    options: RestoreOptions,
    *,
    stale_after: float = 1800.0,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore source ``name`` as ``options`` say; raises RestoreError, IntegrityError, SnapshotNotFound."""
    source = make_source(name, settings)
    target = source.parse_target(options)  # option mistakes first, before any I/O
    header = repository.find_snapshot(name, snapshot=options.snapshot, at=options.at)
    if options.dry_run:
        return source.restore(repository, header, target, options=options, progress=progress)
    with repository.lock("shared", f"restore {name}", stale_after=stale_after):
        return source.restore(repository, header, target, options=options, progress=progress)
