"""Repository locks: shared (backup, restore, check) and exclusive (prune), with a heartbeat.

Taking a lock writes ``locks/<uuid>.json`` first and looks for conflicting locks second; both sides
of a race do the same, so at least one of them sees the other (the store is read-after-write
consistent: a local directory, and S3 since 2020). The loser removes its own lock and fails.

A lock names its holder as restic's do: host name, pid, and (Linux) the kernel's boot id, the pid
namespace and the process's start time. When is a lock stale (``stale_reason``)?

- its heartbeat is older than ``stale_after``: whoever held it, it died or lost the store;
- it was written on THIS host (same host name and boot id, same pid namespace) by a process that
  is gone, a zombie, or whose pid now belongs to a process started at another time: at once;
- it was written on this host before its last reboot (same host name, another boot id, and no
  heartbeat since this boot): at once. Another boot id with a heartbeat since this boot is another
  machine of the same name: the heartbeat rule only;
- another host's lock, and a lock file without these fields (older Lifeboat): the heartbeat rule.

Whoever takes a lock removes every stale lock it meets, with a warning naming the dead holder
(``lock.stale_removed``); ``lifeboat unlock`` removes them on demand (``remove_locks``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from backup.repository.store import ObjectInfo, ObjectNotFound, Store, get_bytes, put_bytes
from policies.durations import human_duration
from policies.errors import LifeboatError, StoreError

LockKind = Literal["shared", "exclusive"]
PREFIX = "locks/"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
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
    boot_id: str | None = None  # the holder's kernel boot id; None in lock files of older versions
    pid_namespace: str | None = None  # readlink /proc/self/ns/pid of the holder, e.g. "pid:[4026531836]"
    process_start: int | None = None  # the holder's start time, clock ticks after boot (/proc/<pid>/stat)

    def describe(self) -> str:
        return f"{self.kind} lock for {self.purpose} by {self.host} pid {self.pid} (since {self.created})"

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``: the lock's name, kind, purpose, holder and heartbeat age."""
        return {
            "lock": self.key.removeprefix(PREFIX).removesuffix(".json"),
            "kind": self.kind,
            "purpose": self.purpose,
            "host": self.host,
            "pid": self.pid,
            "created": self.created,
            "age_seconds": round(self.age_seconds, 1),
        }


@dataclass(frozen=True)
class ThisHost:
    """Who we are, to judge the locks of this host: its name, boot id, pid namespace and uptime
    (None where the system does not say: only Linux gives a boot id)."""

    name: str
    boot_id: str | None
    pid_namespace: str | None
    uptime: float | None  # seconds since boot

    @classmethod
    def current(cls) -> ThisHost:
        return cls(socket.gethostname(), _read_text(BOOT_ID), _pid_namespace(), _uptime())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return None


def _uptime() -> float | None:
    text = _read_text(Path("/proc/uptime"))
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22), or None
    when there is no such process or it is a zombie (it holds nothing and never beats again)."""
    stat = _read_text(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    try:
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def stale_reason(
    lock: LockInfo,
    *,
    stale_after: float,
    here: ThisHost,
    process_start: Callable[[int], int | None] = process_start,
) -> str | None:
    """Why ``lock`` is stale (see the module docstring), or None while its holder may be alive.
    ``process_start(pid)`` gives a process's start time on this host, None when it is gone."""
    if lock.age_seconds > stale_after:
        return f"no heartbeat for {human_duration(lock.age_seconds)} (over {human_duration(stale_after)})"
    if lock.host != here.name or lock.boot_id is None or here.boot_id is None:
        return None  # another host, or a lock without identity: only its heartbeat tells
    if lock.boot_id != here.boot_id:
        if here.uptime is not None and lock.age_seconds > here.uptime:
            return f"written before {here.name} last rebooted"
        return None  # a heartbeat since this boot: another machine that has this host name
    if lock.pid_namespace is None or lock.pid_namespace != here.pid_namespace:
        return None  # a container of this machine: its pids are not ours to look at
    started = process_start(lock.pid)
    if started is None:
        return f"process {lock.pid} is gone from {here.name}"
    if lock.process_start is not None and started != lock.process_start:
        return f"pid {lock.pid} now belongs to another process"
    return None


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
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    age = (now - info.modified).total_seconds()
    return LockInfo(
        info.key,
        "shared" if doc.get("kind") == "shared" else "exclusive",
        str(doc.get("purpose", "unknown (unreadable lock file)")),
        str(doc.get("host", "?")),
        _int(doc.get("pid")) or 0,
        str(doc.get("created", "?")),
        age,
        boot_id=_text(doc.get("boot_id")),
        pid_namespace=_text(doc.get("pid_namespace")),
        process_start=_int(doc.get("process_start")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class LockSweep:
    """What ``remove_locks`` did: the locks removed, each with why it was stale (None: it was live),
    and the locks kept."""

    removed: list[tuple[LockInfo, str | None]] = field(default_factory=list)
    kept: list[LockInfo] = field(default_factory=list)


def remove_locks(
    store: Store, *, stale_after: float, live_too: bool | Collection[str] = False, dry_run: bool = False
) -> LockSweep:
    """Remove every stale lock, and the live ones ``live_too`` names (True: all of them: their runs
    lose the lock's protection); keep the others. A dry run only says which would go. Raises StoreError."""
    sweep = LockSweep()
    here = ThisHost.current()
    for lock in list_locks(store):
        reason = stale_reason(lock, stale_after=stale_after, here=here)
        if reason is None and not (live_too is True or (live_too and lock.key in live_too)):
            sweep.kept.append(lock)
            continue
        if not dry_run:
            store.delete(lock.key)
            log.warning("lock.removed", lock=lock.describe(), reason=reason or "live, removed on request")
        sweep.removed.append((lock, reason))
    return sweep


def _conflicts(mine: LockKind, other: LockKind) -> bool:
    return mine == "exclusive" or other == "exclusive"


@contextlib.contextmanager
def repository_lock(store: Store, kind: LockKind, purpose: str, *, stale_after: float) -> Iterator[LockInfo]:
    """Hold a lock while the block runs; heartbeat every ``stale_after / 3`` seconds."""
    key = f"{PREFIX}{uuid.uuid4().hex}.json"
    created = datetime.now(UTC).isoformat()
    here, pid = ThisHost.current(), os.getpid()
    holder = {"host": here.name, "pid": pid, "boot_id": here.boot_id, "pid_namespace": here.pid_namespace}
    body = json.dumps({"kind": kind, "purpose": purpose, "created": created, **holder, "process_start": process_start(pid)})
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
        yield LockInfo(key, kind, purpose, here.name, pid, created, 0.0, here.boot_id, here.pid_namespace)
    finally:
        stop.set()
        beat.join()
        store.delete(key)


def _check_conflicts(store: Store, own_key: str, kind: LockKind, stale_after: float) -> None:
    """Remove the stale locks met on the way (any kind: a dead holder's lock only misleads);
    raise RepositoryLocked for the first live one that conflicts with ``kind``."""
    here = ThisHost.current()
    for other in list_locks(store):
        if other.key == own_key:
            continue
        reason = stale_reason(other, stale_after=stale_after, here=here)
        if reason is not None:
            log.warning("lock.stale_removed", lock=other.describe(), reason=reason)
            store.delete(other.key)
            continue
        if _conflicts(kind, other.kind):
            advice = _advice(other, here)
            raise RepositoryLocked(f"repository is busy: {other.describe()}; try again when it finishes{advice}")


def _advice(lock: LockInfo, here: ThisHost) -> str:
    if lock.host == here.name:
        return ""
    return f" (if {lock.host} is gone, its lock goes stale without a heartbeat; `lifeboat unlock --all` removes it now)"


def _heartbeat(store: Store, key: str, body: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            put_bytes(store, key, body.encode())  # a rewrite refreshes the object's modified time
        except StoreError as exc:
            log.warning("lock.heartbeat_failed", lock=key, error=str(exc))
