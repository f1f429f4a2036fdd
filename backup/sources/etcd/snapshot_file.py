"""An etcd snapshot file on its own: its name in a snapshot, etcd's sha256 trailer and what
``etcdctl snapshot status`` says about it.

etcd appends the sha256 of the db to every snapshot it sends (the last 32 bytes are the sha256 of
everything before them); ``snapshot status`` reports hash, revision, total keys and total size
(file size - 32). Both are checked before a snapshot is uploaded as good, and again on restore.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from policies.errors import SourceError

SNAPSHOT_ENTRY = "snapshot.db"
TRAILER_SIZE = 32  # etcd appends the sha256 of the db to every snapshot it sends
READ_BLOCK = 4 * 1024 * 1024


class CorruptSnapshotError(SourceError):
    """A snapshot file fails etcd's own checks (sha256 trailer, ``snapshot status``)."""


def verify_trailer(path: Path) -> str:
    """Check etcd's sha256 trailer of the snapshot file at ``path``; return the trailer (hex).

    Raises CorruptSnapshotError when the file is too short or its bytes do not match the trailer
    (a truncated or damaged transfer)."""
    return read_trailer(path)[0]


def read_trailer(path: Path) -> tuple[str, str]:
    """One pass over the snapshot file at ``path``: check etcd's sha256 trailer, and digest the whole
    file on the way (the sha256 of the db is the state the whole file's sha256 continues from).
    Returns (trailer hex, sha256 hex of the whole file), the latter comparable with the digest of
    the stream that was stored.

    Raises CorruptSnapshotError when the file is too short or its bytes do not match the trailer
    (a truncated or damaged transfer)."""
    size = path.stat().st_size
    if size <= TRAILER_SIZE:
        raise CorruptSnapshotError(f"{path} holds {size} bytes: too short to be an etcd snapshot")
    digest = hashlib.sha256()
    remaining = size - TRAILER_SIZE
    buffer = bytearray(min(READ_BLOCK, remaining))
    view = memoryview(buffer)
    with path.open("rb") as handle:
        while remaining:
            got = handle.readinto(view[: min(len(buffer), remaining)])
            if not got:
                raise CorruptSnapshotError(f"{path} shrank while it was being checked")
            digest.update(view[:got])
            remaining -= got
        trailer = handle.read(TRAILER_SIZE)
    if digest.digest() != trailer:
        raise CorruptSnapshotError(
            f"{path}: its sha256 trailer does not match its contents (a truncated or damaged snapshot)"
        )
    digest.update(trailer)
    return trailer.hex(), digest.hexdigest()


@dataclass(frozen=True)
class SnapshotStatus:
    """What ``etcdctl snapshot status -w json`` says about a snapshot file."""

    hash: int
    revision: int
    total_keys: int
    total_size: int

    @classmethod
    def parse(cls, output: bytes, *, file_size: int) -> SnapshotStatus:
        """Parse and sanity-check the status output against the file it describes.

        Raises CorruptSnapshotError when the output is not a status, the revision is not positive
        or the db size it reports plus the 32-byte trailer is not the file's size."""
        try:
            doc = json.loads(output)
            status = cls(int(doc["hash"]), int(doc["revision"]), int(doc["totalKey"]), int(doc["totalSize"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptSnapshotError(f"snapshot status gave no usable answer ({exc}): {output[:200]!r}") from None
        if status.revision < 0 or status.total_keys < 0:
            raise CorruptSnapshotError(f"snapshot status reports impossible figures: {output[:200]!r}")
        if status.total_size + TRAILER_SIZE != file_size:
            raise CorruptSnapshotError(
                f"snapshot status reports a {status.total_size}-byte db, but the file holds {file_size} bytes "
                f"(expected db + {TRAILER_SIZE}-byte trailer)"
            )
        return status

    def as_dict(self) -> dict[str, int]:
        return {"hash": self.hash, "revision": self.revision, "total_keys": self.total_keys, "total_size": self.total_size}
