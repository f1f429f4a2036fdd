"""Snapshot manifests: the commit point of a snapshot (DESIGN section 3).

A manifest is a small object ``snapshots/<source>/<snapshot-id>.json.zst`` holding the header
(source, kind, times, status, fingerprint, census) and the chunk list of the *entries stream*:
JSON lines, one per file / table partition / object, stored through the same chunk path as data.
So a manifest of a million entries is written and read one chunk at a time, and it is verified,
deduplicated and encrypted exactly like the data it describes.

Format 2 (repository format 2) protects the header in every repository, encrypted or not: the JSON
document is followed by a line holding its SHA-256, so a changed byte is an integrity error, never a
silently different digest. The entries stream needs no checksum of its own: the header names its
chunks by their hashes. What the header says of its entries (their count and bytes) is checked when
they are read (``Repository.entries``), and the id and source against the manifest's name
(``Repository.read_header``). Format 1 manifests (no checksum line) still read.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from policies.model import SNAPSHOT_ID

MANIFEST_FORMAT = 2
READABLE_MANIFEST_FORMATS = (1, 2)
SnapshotStatus = Literal["good", "suspicious"]
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def new_snapshot_id(source: str, at: datetime) -> str:
    """``<source>-<YYYYmmddTHHMMSSZ>-<4 hex>``: sorts by time within a source."""
    return f"{source}-{at.astimezone(UTC).strftime(_TIME_FORMAT)}-{secrets.token_hex(2)}"


def snapshot_time(snapshot_id: str) -> datetime:
    match = SNAPSHOT_ID.match(snapshot_id)
    if not match:
        raise ValueError(f"'{snapshot_id}' is not a snapshot id like k8s-etcd-20261128T020000Z-ab12")
    return datetime.strptime(match["time"], _TIME_FORMAT).replace(tzinfo=UTC)


def snapshot_source(snapshot_id: str) -> str:
    match = SNAPSHOT_ID.match(snapshot_id)
    if not match:
        raise ValueError(f"'{snapshot_id}' is not a snapshot id like k8s-etcd-20261128T020000Z-ab12")
    return match["source"]


def manifest_key(source: str, snapshot_id: str) -> str:
    return f"snapshots/{source}/{snapshot_id}.json.zst"


_MANIFEST_KEY = re.compile(r"^snapshots/(?P<source>[^/]+)/(?P<id>[^/]+)\.json\.zst$")


def parse_manifest_key(key: str) -> tuple[str, str] | None:
    match = _MANIFEST_KEY.match(key)
    return (match["source"], match["id"]) if match and SNAPSHOT_ID.match(match["id"]) else None


def chunk_key(chunk_id: str) -> str:
    """Where a chunk stored as an object of its own lives."""
    return f"chunks/{chunk_id[:2]}/{chunk_id}"


def pack_key(pack_id: str) -> str:
    """Where a pack of small chunks lives (repository format 3, see packs.py)."""
    return f"packs/{pack_id[:2]}/{pack_id}"


class ChunkRef(NamedTuple):
    """Where a piece of an entry is: the chunk's id (the hash of its plaintext) and plaintext size;
    for a small chunk in a pack (format 3), the pack and the byte range of its sealed bytes there."""

    id: str
    size: int
    pack: str = ""  # "" for a chunk stored as an object of its own
    offset: int = 0
    length: int = 0

    @property
    def key(self) -> str:
        """The store object that holds it."""
        return pack_key(self.pack) if self.pack else chunk_key(self.id)

    def to_json(self) -> list[Any]:
        """``[id, size]`` (every format), or ``[id, size, pack, offset, length]`` for a packed chunk."""
        return list(self) if self.pack else [self.id, self.size]

    @classmethod
    def from_json(cls, doc: list[Any]) -> ChunkRef:
        if len(doc) == 2:
            return cls(str(doc[0]), int(doc[1]))
        chunk_id, size, pack, offset, length = doc
        if not isinstance(pack, str) or not pack or offset < 0 or length <= 0:
            raise ValueError(f"chunk reference {doc} names no readable place in a pack")
        return cls(str(chunk_id), int(size), pack, int(offset), int(length))


@dataclass(frozen=True)
class Entry:
    """One restorable item of a snapshot: a file, a table partition, an object."""

    name: str
    size: int
    sha256: str
    chunks: list[ChunkRef]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_line(self) -> bytes:
        doc = {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "chunks": [ref.to_json() for ref in self.chunks],
            "meta": self.meta,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Entry:
        doc = json.loads(line)
        return cls(
            doc["name"], doc["size"], doc["sha256"], [ChunkRef.from_json(c) for c in doc["chunks"]], doc.get("meta") or {}
        )


@dataclass(frozen=True)
class SnapshotHeader:
    """Everything about a snapshot except its entries."""

    id: str
    source: str
    kind: str
    started: datetime
    finished: datetime
    status: SnapshotStatus
    tool_version: str
    entry_count: int
    size: int  # bytes of all entries
    entries_chunks: list[ChunkRef]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    census: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> datetime:
        return self.started

    def to_json(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "status": self.status,
            "tool_version": self.tool_version,
            "entry_count": self.entry_count,
            "size": self.size,
            "entries_chunks": [ref.to_json() for ref in self.entries_chunks],
            "fingerprint": self.fingerprint,
            "census": self.census,
            "meta": self.meta,
        }
        document = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()  # never a raw newline
        return document + b"\n" + hashlib.sha256(document).hexdigest().encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> SnapshotHeader:
        """The header in ``data``; raises ValueError (or KeyError) when it is damaged or of another format."""
        document, _, checksum = data.partition(b"\n")
        doc = json.loads(document)
        version = doc.get("format") if isinstance(doc, dict) else None
        if version not in READABLE_MANIFEST_FORMATS:
            raise ValueError(f"manifest format {version} is not one this Lifeboat reads ({READABLE_MANIFEST_FORMATS})")
        if version >= 2 and checksum.rstrip(b"\n").decode(errors="replace") != hashlib.sha256(document).hexdigest():
            raise ValueError("its checksum does not match its content (bytes changed)")
        return cls(
            id=doc["id"],
            source=doc["source"],
            kind=doc["kind"],
            started=datetime.fromisoformat(doc["started"]),
            finished=datetime.fromisoformat(doc["finished"]),
            status=doc["status"],
            tool_version=doc["tool_version"],
            entry_count=doc["entry_count"],
            size=doc["size"],
            entries_chunks=[ChunkRef.from_json(c) for c in doc["entries_chunks"]],
            fingerprint=doc.get("fingerprint") or {},
            census=doc.get("census") or {},
            meta=doc.get("meta") or {},
        )

    def summary(self) -> dict[str, Any]:
        """The ``snapshots list --json`` shape."""
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "time": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "status": self.status,
            "size": self.size,
            "entries": self.entry_count,
        }
