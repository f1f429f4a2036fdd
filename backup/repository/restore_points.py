"""Restore-point manifests: which snapshots of several sources make one moment of the platform.

A restore point is ``restore-points/<name>/<id>.json`` in the repository, written like a snapshot
manifest: the JSON document, a line holding its SHA-256, sealed by the repository's codec (zstd,
and encryption when the repository has a key). It names one snapshot per member source, each
member's consistency window (when the source's state was read: the pin times of a ClickHouse
logical snapshot, otherwise the snapshot's start and end) and ``spread_seconds``, the time from
the earliest window start to the latest window end: no two members' states lie further apart.

A restore point is ``complete`` only when every member committed a snapshot; otherwise it is
``failed`` and names the members that failed (their ``snapshot`` is null). The good members of a
failed restore point are ordinary snapshots of their sources.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from backup.repository.manifest import SnapshotHeader, new_snapshot_id
from backup.repository.repository import Repository, SnapshotNotFound
from backup.repository.store import put_bytes
from policies.errors import IntegrityError
from policies.model import SNAPSHOT_ID

RESTORE_POINTS_PREFIX = "restore-points/"
RESTORE_POINT_FORMAT = 1
RestorePointStatus = Literal["complete", "failed"]
log = structlog.get_logger(__name__)
_KEY = re.compile(r"^restore-points/(?P<name>[^/]+)/(?P<id>[^/]+)\.json$")


def restore_point_key(name: str, point_id: str) -> str:
    return f"{RESTORE_POINTS_PREFIX}{name}/{point_id}.json"


def new_restore_point_id(name: str, at: datetime) -> str:
    """``<name>-<YYYYmmddTHHMMSSZ>-<4 hex>``, like a snapshot id: sorts by time within a name."""
    return new_snapshot_id(name, at)


@dataclass(frozen=True)
class Member:
    """One member source of a restore point: its snapshot (None when it failed) and its window."""

    source: str
    snapshot: str | None
    window_start: datetime | None = None
    window_end: datetime | None = None
    error: str | None = None

    @property
    def committed(self) -> bool:
        return self.snapshot is not None

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"source": self.source, "snapshot": self.snapshot}
        document["status"] = "committed" if self.committed else "failed"
        if self.window_start is not None and self.window_end is not None:
            seconds = round((self.window_end - self.window_start).total_seconds(), 3)
            document["window"] = {
                "start": self.window_start.isoformat(),
                "end": self.window_end.isoformat(),
                "seconds": seconds,
            }
        if self.error is not None:
            document["error"] = self.error
        return document

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Member:
        window = doc.get("window") or {}
        return cls(
            source=doc["source"],
            snapshot=doc.get("snapshot"),
            window_start=datetime.fromisoformat(window["start"]) if window else None,
            window_end=datetime.fromisoformat(window["end"]) if window else None,
            error=doc.get("error"),
        )


def consistency_window(header: SnapshotHeader) -> tuple[datetime, datetime]:
    """When the source's state in ``header`` was read: a snapshot's meta ``consistency`` window
    (ClickHouse logical: the earliest and latest pin) when it has one, else its start and end."""
    window = header.meta.get("consistency")
    if isinstance(window, dict) and "earliest" in window and "latest" in window:
        try:
            return datetime.fromisoformat(window["earliest"]), datetime.fromisoformat(window["latest"])
        except (TypeError, ValueError):
            pass  # a window we cannot read: the snapshot's own times still bound it
    return header.started, header.finished


@dataclass(frozen=True)
class RestorePoint:
    id: str
    name: str
    started: datetime
    finished: datetime
    members: tuple[Member, ...] = field(default_factory=tuple)

    @property
    def status(self) -> RestorePointStatus:
        return "complete" if self.members and all(member.committed for member in self.members) else "failed"

    @property
    def failed(self) -> list[str]:
        return [member.source for member in self.members if not member.committed]

    @property
    def snapshots(self) -> list[str]:
        return [member.snapshot for member in self.members if member.snapshot is not None]

    @property
    def spread_seconds(self) -> float | None:
        """From the earliest window start to the latest window end of the committed members."""
        windows = [(m.window_start, m.window_end) for m in self.members if m.window_start and m.window_end]
        if not windows:
            return None
        return round((max(end for _, end in windows) - min(start for start, _ in windows)).total_seconds(), 3)

    def summary(self) -> dict[str, Any]:
        """The ``restore-point list --json`` item."""
        return {
            "id": self.id,
            "name": self.name,
            "time": self.started.isoformat(),
            "status": self.status,
            "spread_seconds": self.spread_seconds,
            "members": [{"source": member.source, "snapshot": member.snapshot} for member in self.members],
            "failed": self.failed,
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole document (``restore-point show --json``, ``backup run --restore-point --json``)."""
        return {
            **self.summary(),
            "finished": self.finished.isoformat(),
            "members": [member.as_dict() for member in self.members],
        }

    def to_json(self) -> bytes:
        doc = {"format": RESTORE_POINT_FORMAT, **self.as_dict()}
        document = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return document + b"\n" + hashlib.sha256(document).hexdigest().encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> RestorePoint:
        """Raises ValueError / KeyError / TypeError when ``data`` is damaged or of another format."""
        document, _, checksum = data.partition(b"\n")
        if checksum.rstrip(b"\n").decode(errors="replace") != hashlib.sha256(document).hexdigest():
            raise ValueError("its checksum does not match its content (bytes changed)")
        doc = json.loads(document)
        if doc.get("format") != RESTORE_POINT_FORMAT:
            raise ValueError(f"restore point format {doc.get('format')} is not one this Lifeboat reads")
        return cls(
            id=doc["id"],
            name=doc["name"],
            started=datetime.fromisoformat(doc["time"]),
            finished=datetime.fromisoformat(doc["finished"]),
            members=tuple(Member.from_dict(member) for member in doc["members"]),
        )


def build_restore_point(
    name: str,
    *,
    started: datetime,
    sources: Iterable[str],
    headers: dict[str, SnapshotHeader],
    errors: dict[str, str],
) -> RestorePoint:
    """The restore point of a run that began at ``started``: ``headers`` are the committed members'
    snapshots, ``errors`` why the others failed (a member in neither failed without a word)."""
    members = []
    for source in sources:
        header = headers.get(source)
        if header is None:
            members.append(Member(source, None, error=errors.get(source, "no snapshot was committed")))
            continue
        start, end = consistency_window(header)
        members.append(Member(source, header.id, start, end))
    return RestorePoint(new_restore_point_id(name, started), name, started, datetime.now(UTC), tuple(members))


def write_restore_point(repository: Repository, point: RestorePoint) -> str:
    """Commit ``point`` (sealed like a snapshot manifest); returns its key."""
    key = restore_point_key(point.name, point.id)
    put_bytes(repository.store, key, repository.codec.encode(point.to_json(), name=key))
    return key


def restore_point_ids(repository: Repository, name: str | None = None) -> list[str]:
    """Ids of the stored restore points (of ``name``), oldest first."""
    prefix = f"{RESTORE_POINTS_PREFIX}{name}/" if name else RESTORE_POINTS_PREFIX
    found = [match["id"] for info in repository.store.list(prefix) if (match := _KEY.match(info.key))]
    return sorted((point_id for point_id in found if SNAPSHOT_ID.match(point_id)), key=_by_time)


def read_restore_point(repository: Repository, point_id: str) -> RestorePoint:
    """Raises SnapshotNotFound (no such restore point), IntegrityError (a damaged manifest)."""
    match = SNAPSHOT_ID.match(point_id)
    if not match:
        raise SnapshotNotFound(f"'{point_id}' is not a restore point id like platform-20261128T030000Z-ab12")
    key = restore_point_key(match["source"], point_id)
    point = repository.read_document(
        key,
        RestorePoint.from_json,
        missing=f"no restore point {point_id} in {repository.url}",
        damaged=lambda why: IntegrityError(f"restore point manifest {key} is unreadable: {why}"),
    )
    if point.id != point_id:
        raise IntegrityError(f"restore point manifest {key} holds {point.id}, not {point_id}: refusing to use it")
    return point


def list_restore_points(repository: Repository, name: str | None = None) -> list[RestorePoint]:
    """Every readable stored restore point (of ``name``), oldest first; a damaged manifest is left out
    with a warning (``restore-point show ID`` names the damage)."""
    points = []
    for point_id in restore_point_ids(repository, name):
        try:
            points.append(read_restore_point(repository, point_id))
        except SnapshotNotFound:
            continue  # deleted since the listing
        except IntegrityError as exc:
            log.warning("restore_point.damaged", restore_point=point_id, error=str(exc))
    return points


def delete_restore_point(repository: Repository, point: RestorePoint) -> None:
    """Forget a restore point: its manifest goes; its members are left to their sources' retention."""
    repository.store.delete(restore_point_key(point.name, point.id))


def _by_time(point_id: str) -> tuple[str, str]:
    return point_id.rsplit("-", 2)[-2], point_id
