"""A damaged state DB never stops backups: ``set_aside_if_damaged`` finds it when it is opened and moves
it (with a ``-wal`` that holds anything) to ``state.db.damaged-<time>``, so that a fresh DB records the runs
again; the caller warns loudly and tells the team (``lifeboat.operations``), and ``lifeboat status``
shows the ``StateDamage`` that the fresh DB keeps.

Damage is what SQLite calls it: a file that is not a database (garbage), a corrupt one (truncated,
overwritten pages), or one whose ``PRAGMA quick_check`` fails. A busy, locked or unreadable DB is
not damage: it is left alone and reported as before.

A zero-byte file is damage when Lifeboat has run jobs beside it (the ``locks/source-*.lock`` files
its backups, prunes and drills leave): its history was lost, and the empty file is kept as evidence.
Without them it is a new DB (provisioning created it, with its owner and mode, or a first open was
killed before SQLite wrote its header): nothing was lost, and it is simply initialised.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lifeboat.state import StateError
from lifeboat.state.records import timestamp_text, utc_now

META_KEY = "state_damage"  # the fresh DB's meta row telling what happened to the one before
WAL, SHM = "-wal", "-shm"  # a WAL with content is moved along (SQLite reads it with its file); the -shm is derived


@dataclass(frozen=True)
class StateDamage:
    """A state DB found damaged: where it was moved, when, and what was wrong with it."""

    moved_to: Path
    found: datetime
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"moved_to": str(self.moved_to), "found": self.found.isoformat(), "reason": self.reason}

    def to_json(self) -> str:
        return json.dumps({**self.as_dict(), "found": timestamp_text(self.found)})

    @classmethod
    def from_json(cls, text: str) -> StateDamage:
        document = json.loads(text)
        return cls(Path(document["moved_to"]), datetime.fromisoformat(document["found"]), str(document["reason"]))

    def sentence(self) -> str:
        return (
            f"the state DB was damaged ({self.reason}) and was moved to {self.moved_to} at "
            f"{self.found:%Y-%m-%d %H:%M:%S} UTC; the run history starts again from then"
        )


def set_aside_if_damaged(path: Path, *, busy_timeout: float) -> StateDamage | None:
    """Move a damaged state DB at ``path`` aside; return what was done, or None (not damaged, missing,
    or moved by another process meanwhile). Raises StateError when it cannot be moved."""
    if damage_of(path, busy_timeout=busy_timeout) is None:
        return None
    with _repair_lock(path.parent / "locks" / f"repair-{path.name}.lock"):
        reason = damage_of(path, busy_timeout=busy_timeout)  # another process may have moved it already
        if reason is None:
            return None
        found = utc_now().replace(microsecond=0)
        moved_to = _free_name(path, f"{path.name}.damaged-{found:%Y%m%dT%H%M%SZ}")
        try:
            path.rename(moved_to)
            wal = Path(f"{path}{WAL}")
            if wal.exists() and wal.stat().st_size > 0:
                wal.rename(f"{moved_to}{WAL}")
            wal.unlink(missing_ok=True)
            Path(f"{path}{SHM}").unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(
                f"the state DB {path} is damaged ({reason}) and cannot be moved aside: {exc.strerror}; "
                f"move it away by hand (with any {path.name}-wal and -shm beside it) and run again"
            ) from exc
        return StateDamage(moved_to, found, reason)


def damage_of(path: Path, *, busy_timeout: float) -> str | None:
    """What is wrong with the state DB at ``path``, or None when it is sound, missing or new."""
    try:
        size = path.stat().st_size
    except OSError:
        return None  # missing (created next), or unreadable: opening it says why
    if size == 0:
        return "it is empty although Lifeboat has run jobs with it" if _used_before(path) else None
    try:
        # Read-only: a read-write connection to a damaged file deletes its -wal when it closes.
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=busy_timeout, isolation_level=None)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) if _is_damage(exc) else None
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    return f"its integrity check failed: {'; '.join(problems[:3])}" if problems else None


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"


def _used_before(path: Path) -> bool:
    return any((path.parent / "locks").glob("source-*.lock"))


def _free_name(path: Path, name: str) -> Path:
    candidate = path.with_name(name)
    number = 1
    while candidate.exists():
        candidate = path.with_name(f"{name}-{number}")
        number += 1
    return candidate


@contextlib.contextmanager
def _repair_lock(lock: Path) -> Iterator[None]:
    """One process at a time moves a damaged DB (two would move each other's fresh one)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise StateError(f"cannot create {lock}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
