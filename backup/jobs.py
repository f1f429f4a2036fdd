"""Backup and restore runs: the orchestration around a source, written once for every kind.

``run_backup``: previous snapshot -> shared lock -> source.snapshot -> anomaly guard -> commit.
``run_restore``: find the snapshot -> source.parse_target -> source.restore (under a shared lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from backup.repository.manifest import SnapshotHeader, SnapshotStatus
from backup.repository.repository import Repository, SnapshotNotFound, WriteStats
from backup.sources import make_source
from backup.sources.base import Progress, RestoreOptions, RestoreResult, SnapshotOutcome
from policies.model import AnomalyGuard, SourceSettings

log = structlog.get_logger(__name__)


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
