"""What the run history holds (``lifeboat.state.history``): runs, incidents, the snapshot inventory.

A run's status is a ``RunStatus`` (running, ok, failed, suspicious, interrupted), or, for a drill
run that finished, the drill's own verdict: the ``drills.model.Status`` that the drill reports and
the CLI exits with (one verdict enum; the column stores its value).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from drills.model import Status

REPOSITORY_NAME = "repository"  # the run name of prune and check, which work on the whole repository
SCRATCH_NAME = "scratch"  # the run name of the janitor, which cleans up after drills


class RunKind(StrEnum):
    BACKUP = "backup"
    PRUNE = "prune"
    CHECK = "check"
    DRILL = "drill"
    JANITOR = "janitor"
    RESTORE_POINT = "restore-point"  # ``backup run --restore-point NAME``: the run of the restore point itself


class RunStatus(StrEnum):
    """How a run stands; a finished drill run has its verdict (``drills.model.Status``) instead."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SUSPICIOUS = "suspicious"  # the backup completed, and its snapshot looks like mass deletion
    INTERRUPTED = "interrupted"  # aborted at shutdown, or its process died


FINISHED_BACKUP = (RunStatus.OK, RunStatus.SUSPICIOUS)  # a backup that committed a snapshot
DRILL_VERDICTS = tuple(Status)  # a drill run that finished, whatever it proved
_STATUSES: dict[str, RunStatus | Status] = {status.value: status for status in (*RunStatus, *Status)}


def parse_status(text: str) -> RunStatus | Status:
    """The status stored as ``text``; KeyError for a text that is none."""
    return _STATUSES[text]


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp_text(moment: datetime) -> str:
    """``moment`` as stored: ISO 8601 in UTC, to the microsecond (so stored times sort as text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``."""

    id: int
    kind: RunKind
    name: str
    started: datetime
    finished: datetime | None
    status: RunStatus | Status
    figures: dict[str, Any]
    snapshot_id: str | None
    error: str | None
    origin: str
    host: str
    pid: int

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else (self.finished - self.started).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        """The run as ``lifeboat status --json`` shows it."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "name": self.name,
            "status": self.status.value,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "snapshot_id": self.snapshot_id,
            "error": self.error,
            "origin": self.origin,
            "host": self.host,
            "pid": self.pid,
            "figures": self.figures,
        }


@dataclass(frozen=True)
class Incident:
    """One row of ``incidents``: a failure that lasts until the next success."""

    id: int
    key: str
    event: str
    name: str
    opened: datetime
    last_seen: datetime
    closed: datetime | None
    occurrences: int
    notified: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "name": self.name,
            "opened": self.opened.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "closed": self.closed.isoformat() if self.closed else None,
            "occurrences": self.occurrences,
            "notified": self.notified,
            "message": self.message,
        }


@dataclass(frozen=True)
class Inventory:
    """What the last repository listing counted for one source."""

    source: str
    snapshots: int
    suspicious: int
    repository: str  # the repository's id: counts from another repository do not carry over
    listed: datetime
