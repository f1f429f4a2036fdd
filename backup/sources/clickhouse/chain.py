"""Native backup chains and the retention rule for them (pure: prune's hook for the kind, no I/O).

A native snapshot's server-side backup lives under ``native/<source>/<snapshot id>/`` in the
repository's store; an incremental one names its base (``base_backup``) and, through it, every backup
below. ``meta["native"]`` of the snapshot records all of that (``NativeBackupInfo``).

Retention: a native backup may be deleted only once no kept snapshot needs it, as its own backup or
as a base anywhere in its chain (``deletable_native_backups``): deleting a base breaks every
incremental on top of it (clickhouse-backup has broken chains this way). ``NativeBackupPruning`` is
that rule as the kind's prune hook (``prune_hook`` in kind.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from backup.repository.manifest import SnapshotHeader

NATIVE_PREFIX = "native"
MAX_CHAIN = 7
"""Backups in one chain (a full one and its incrementals) before the next full backup: bounds how
much a restore reads and lets retention free old chains."""


def native_location(source: str, snapshot_id: str) -> str:
    return f"{NATIVE_PREFIX}/{source}/{snapshot_id}"


@dataclass(frozen=True)
class NativeBackupInfo:
    """``meta["native"]`` of a snapshot: where its backup is and every backup it needs."""

    location: str  # key prefix in the repository's store
    url: str  # as the server saw it (no credentials)
    base: str | None = None  # location of the base backup (None: a full backup)
    base_snapshot: str | None = None
    chain: tuple[str, ...] = ()  # every base, nearest first

    def to_json(self) -> dict[str, object]:
        return {
            "location": self.location,
            "url": self.url,
            "base": self.base,
            "base_snapshot": self.base_snapshot,
            "chain": list(self.chain),
        }

    @classmethod
    def of(cls, header: SnapshotHeader | None) -> NativeBackupInfo | None:
        doc = header.meta.get("native") if header is not None else None
        if not isinstance(doc, Mapping):
            return None
        return cls(doc["location"], doc["url"], doc.get("base"), doc.get("base_snapshot"), tuple(doc.get("chain", ())))


def needed_native_backups(kept: Iterable[SnapshotHeader]) -> set[str]:
    """Locations of the native backups ``kept`` snapshots need: their own and every base below."""
    needed: set[str] = set()
    for header in kept:
        info = NativeBackupInfo.of(header)
        if info is not None:
            needed.add(info.location)
            needed.update(info.chain)
    return needed


def native_backup_locations(keys: Iterable[str]) -> set[str]:
    """``native/<source>/<snapshot id>`` of every object key under ``native/`` (store-relative)."""
    found = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 4 and parts[0] == NATIVE_PREFIX and parts[1] and parts[2]:
            found.add("/".join(parts[:3]))
    return found


def deletable_native_backups(stored: Iterable[str], kept: Iterable[SnapshotHeader]) -> list[str]:
    """Native backup locations that may be deleted: stored, and needed by no kept snapshot (of any
    source) as its own backup or as a base in its chain. ``kept`` must be every snapshot that prune
    keeps, or a kept incremental could lose its base."""
    return sorted(set(stored) - needed_native_backups(kept))


class NativeBackupPruning:
    """The kind's prune hook (``backup.repository.maintenance.PruneHook``): which stored native
    backups no kept ClickHouse snapshot needs."""

    prefix: ClassVar[str] = f"{NATIVE_PREFIX}/"

    def deletable(self, keys: Iterable[str], kept: list[SnapshotHeader]) -> list[str]:
        """``deletable_native_backups`` over the locations of the stored object ``keys``."""
        return deletable_native_backups(native_backup_locations(keys), kept)
