"""Backup and restore runs: the orchestration around a source, written once for every kind.

``run_backup``: previous snapshot -> shared lock -> source.snapshot -> anomaly guard -> commit.
``run_restore``: find the snapshot -> source.parse_target -> source.restore (under a shared lock).

A sharded run (``executor.kubernetes.shards``; backup/repository/parts.py) is N ``run_part_backup``
calls, each in its own Job, then one ``merge_parts``: the parts' entries are listed again in the
order the kind's snapshots keep, their fingerprints and censuses merged by the kind's rule (its
merge, declared in its package's kind.py), the anomaly guard run on the whole, and ONE
snapshot committed; no data moves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from backup.checks import CHECKS_META, checks_at_backup
from backup.repository.manifest import SnapshotHeader, SnapshotStatus
from backup.repository.parts import PartOf
from backup.repository.repository import Repository, SnapshotNotFound, WriteStats
from backup.repository.restore_points import RestorePoint
from backup.sources import make_source, part_merge, source_kind
from backup.sources.base import Progress, RestoreOptions, RestoreResult, SnapshotOutcome, Verification
from backup.sources.parts import PART_META, Merging
from policies.errors import LifeboatError, RestoreError, RestoreUsageError, SourceError
from policies.model import SHARDABLE_KINDS, AnomalyGuard, SourceSettings

log = structlog.get_logger(__name__)
_ONLY_SHARDABLE = f"only {' and '.join(SHARDABLE_KINDS)} sources can be sharded"


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
        if previous:
            writer.remember(previous.entries_chunks)  # unchanged entries: their stream is reused too
        outcome = source.snapshot(writer, previous, progress=progress)
        captured, unhealthy = checks_at_backup(source, settings)
        anomalies = anomalies_against(previous, outcome, settings.anomaly) + unhealthy
        status: SnapshotStatus = "suspicious" if anomalies else "good"
        meta = {**outcome.meta, "anomalies": anomalies} if anomalies else dict(outcome.meta)
        if captured:
            meta[CHECKS_META] = captured
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
        raise SourceError(f"source '{name}' is {settings.kind}: {_ONLY_SHARDABLE}")
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
    merge = part_merge(settings.kind)
    if merge is None:
        raise SourceError(f"source '{name}' is {settings.kind}: {_ONLY_SHARDABLE}")
    try:
        with repository.lock("shared", f"merge {name} run {run}", stale_after=stale_after):
            parts = _complete_parts(repository, name, run, settings.kind)
            previous = _previous(repository, name)
            first = min(part.started for part in parts)
            with repository.begin_snapshot(name, settings.kind, stale_after=stale_after, started=first) as writer:
                outcome = merge(Merging(previous, parts, [repository.entries(part) for part in parts], writer.add))
                captured, unhealthy = checks_at_backup(make_source(name, settings), settings)
                anomalies = anomalies_against(previous, outcome, settings.anomaly) + unhealthy
                status: SnapshotStatus = "suspicious" if anomalies else "good"
                shards = {"run": run, "count": len(parts), "parts": [part.id for part in parts]}
                meta = {**outcome.meta, "shards": shards} | ({"anomalies": anomalies} if anomalies else {})
                meta |= {CHECKS_META: captured} if captured else {}
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
    try:
        if options.dry_run:
            return source.restore(repository, header, target, options=options, progress=progress)
        with repository.lock("shared", f"restore {name}", stale_after=stale_after):
            return source.restore(repository, header, target, options=options, progress=progress)
    except OSError as exc:  # the sources name their target's failures; one they did not foresee is no traceback
        raise RestoreError(f"restore of {name} failed: {exc.strerror or exc}: {exc.filename or 'the target'}") from exc


# ---- a restore point: every member to its target ------------------------------------------------------


def restore_point_options(
    point: RestorePoint, sources: Mapping[str, SourceSettings], options: RestoreOptions
) -> dict[str, RestoreOptions]:
    """Each member's restore options: its snapshot, and the target options of its kind among
    ``options`` (each kind declares its own: ``--to-file`` for etcd, ``--to-host``/``--to-database``
    for ClickHouse, ``--to-dir``/``--to-bucket`` for S3). Every member's options are checked here,
    before any I/O. Raises RestoreError (a failed restore point, a member no longer in the policy),
    RestoreUsageError (a member without a target, two members of one kind, an option no member takes)."""
    if point.status != "complete":
        raise RestoreError(
            f"restore point {point.id} is failed (member {', '.join(point.failed)} did not commit): it is no "
            "moment of the platform; restore its good members one by one with `lifeboat restore SOURCE --snapshot ID`"
        )
    unknown = [member.source for member in point.members if member.source not in sources]
    if unknown:
        raise RestoreError(f"restore point {point.id} names source {', '.join(unknown)}, which the policy no longer defines")
    by_kind: dict[str, list[str]] = {}
    for member in point.members:
        by_kind.setdefault(sources[member.source].kind, []).append(member.source)
    given = set(options.given(*options.target))
    if shared := {kind: names for kind, names in by_kind.items() if len(names) > 1 and given}:
        shared_kind, names = next(iter(shared.items()))
        raise RestoreUsageError(
            f"members {', '.join(names)} are both {shared_kind}: one set of target options cannot take both; "
            "restore them one by one with `lifeboat restore SOURCE --snapshot ID`"
        )
    chosen: dict[str, RestoreOptions] = {}
    taken: set[str] = set()
    missing: list[str] = []
    for member in point.members:
        kind = source_kind(sources[member.source].kind)
        target = {name: value for name, value in options.target.items() if name in kind.target_options and name in given}
        taken |= target.keys()
        if not target:
            flags = ", ".join(flag.option for flag in kind.restore_flags)
            missing.append(f"{member.source} ({sources[member.source].kind}: {flags})")
        chosen[member.source] = dataclasses.replace(options, snapshot=str(member.snapshot), at=None, target=target)
    if missing:
        raise RestoreUsageError(f"no target for member {'; '.join(missing)}: every member of a restore point needs one")
    if unused := sorted(given - taken):
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise RestoreUsageError(f"{flags} fits no member of restore point {point.id}")
    for name, member_options in chosen.items():
        make_source(name, sources[name]).parse_target(member_options)  # option mistakes before any I/O
    return chosen


def run_restore_point(
    repository: Repository,
    point: RestorePoint,
    sources: Mapping[str, SourceSettings],
    options: RestoreOptions,
    *,
    stale_after: float = 1800.0,
) -> list[RestoreResult]:
    """Restore every member of ``point`` to its target (``restore_point_options``), one after the
    other, in the restore point's order; with ``options.dry_run`` the plan of each. Raises what
    ``restore_point_options`` and ``run_restore`` raise; a member that fails stops the restore and
    the error names the members already restored."""
    chosen = restore_point_options(point, sources, options)
    results: list[RestoreResult] = []
    for member, member_options in chosen.items():
        try:
            results.append(run_restore(repository, member, sources[member], member_options, stale_after=stale_after))
        except RestoreUsageError:
            raise
        except RestoreError as exc:
            done = ", ".join(result.source for result in results) or "none"
            raise RestoreError(
                f"restore point {point.id}: member {member} failed: {exc} (restored before it: {done})"
            ) from exc
    return results


@dataclass(frozen=True)
class VerifyResult:
    """``lifeboat verify``: a restored copy compared with a snapshot."""

    source: str
    snapshot: str
    verification: Verification

    def as_dict(self) -> dict[str, Any]:
        found = self.verification
        return {
            "source": self.source,
            "snapshot": self.snapshot,
            "verdict": found.verdict.value,
            "message": found.message,
            "differences": found.differences,
            "checked": found.checked,
        }


def run_verify(
    repository: Repository, name: str, settings: SourceSettings, options: RestoreOptions, *, stale_after: float = 1800.0
) -> VerifyResult:
    """Compare the copy ``options`` name (the same target options as a restore) with a snapshot of
    ``name``, entry by entry where the kind can; never raises for a mismatch. Raises RestoreError
    (option mistakes), SnapshotNotFound."""
    source = make_source(name, settings)
    target = source.parse_target(options)
    header = repository.find_snapshot(name, snapshot=options.snapshot, at=options.at)
    with repository.lock("shared", f"verify {name}", stale_after=stale_after):
        return VerifyResult(name, header.id, source.verify(header, target, repository=repository))
