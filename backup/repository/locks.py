"""Repository locks: shared (backup, restore, check) and exclusive (prune), with a heartbeat.

Taking a lock writes ``locks/<uuid>.json`` first and looks for conflicting locks second; both sides
of a race do the same, so at least one of them sees the other (the store is read-after-write
consistent: a local directory, and S3 since 2020). The loser removes its own lock and fails.
A lock whose heartbeat is older than ``stale_after`` belongs to a process that died: it is broken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from backup.repository.store import ObjectInfo, ObjectNotFound, Store, get_bytes, put_bytes
from policies.errors import LifeboatError, StoreError

LockKind = Literal["shared", "exclusive"]
PREFIX = "locks/"
log = structlog.get_logger(__name__)


class RepositoryLocked(LifeboatError):
    """Another process holds a conflicting lock."""


@dataclass(frozen=True)
class LockInfo:
    key: str
    kind: LockKind
    purpose: str
    host: str
    pid: int
    created: str
    age_seconds: float  # since the last heartbeat, by the store's clock

    def describe(self) -> str:
        return f"{self.kind} lock for {self.purpose} by {self.host} pid {self.pid} (since {self.created})"


def list_locks(store: Store, *, now: datetime | None = None) -> list[LockInfo]:
    now = now or datetime.now(UTC)
    found = []
    for info in store.list(PREFIX):
        lock = _read(store, info, now)
        if lock is not None:
            found.append(lock)
    return found


def _read(store: Store, info: ObjectInfo, now: datetime) -> LockInfo | None:
    try:
        doc = json.loads(get_bytes(store, info.key))
    except ObjectNotFound:
        return None  # released while we looked
    except ValueError:
        doc = {"kind": "exclusive", "purpose": "unknown (unreadable lock file)", "host": "?", "pid": 0, "created": "?"}
    age = (now - info.modified).total_seconds()
    return LockInfo(info.key, doc["kind"], doc["purpose"], doc["host"], doc["pid"], doc["created"], age)


def _conflicts(mine: LockKind, other: LockKind) -> bool:
    return mine == "exclusive" or other == "exclusive"


@contextlib.contextmanager
def repository_lock(store: Store, kind: LockKind, purpose: str, *, stale_after: float) -> Iterator[LockInfo]:
    """Hold a lock while the block runs; heartbeat every ``stale_after / 3`` seconds."""
    key = f"{PREFIX}{uuid.uuid4().hex}.json"
    created = datetime.now(UTC).isoformat()
    body = json.dumps(
        {"kind": kind, "purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(), "created": created}
    )
    put_bytes(store, key, body.encode())
    try:
        _check_conflicts(store, key, kind, stale_after)
    except BaseException:
        store.delete(key)
        raise
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, key, body, stop, stale_after / 3), daemon=True)
    beat.start()
    try:
        yield LockInfo(key, kind, purpose, socket.gethostname(), os.getpid(), created, 0.0)
    finally:
        stop.set()
        beat.join()
        store.delete(key)


def _check_conflicts(store: Store, own_key: str, kind: LockKind, stale_after: float) -> None:
    for other in list_locks(store):
        if other.key == own_key or not _conflicts(kind, other.kind):
            continue
        if other.age_seconds > stale_after:
            log.warning("lock.broken", lock=other.describe(), heartbeat_age=round(other.age_seconds))
            store.delete(other.key)
            continue
        raise RepositoryLocked(f"repository is busy: {other.describe()}; try again when it finishes")


def _heartbeat(store: Store, key: str, body: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            put_bytes(store, key, body.encode())  # a rewrite refreshes the object's modified time
        except StoreError as exc:
            log.warning("lock.heartbeat_failed", lock=key, error=str(exc))
