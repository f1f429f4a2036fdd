"""An etcd snapshot file on its own: its name in a snapshot, etcd's sha256 trailer and what
``etcdctl snapshot status`` says about it.

etcd appends the sha256 of the db to every snapshot it sends (the last 32 bytes are the sha256 of
everything before them); ``snapshot status`` reports hash, revision, total keys and total size
(file size - 32). Both are checked before a snapshot is uploaded as good, and again on restore.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from policies.errors import SourceError

SNAPSHOT_ENTRY = "snapshot.db"
TRAILER_SIZE = 32  # etcd appends the sha256 of the db to every snapshot it sends
READ_BLOCK = 4 * 1024 * 1024


class CorruptSnapshotError(SourceError):
    """A snapshot file fails etcd's own checks (sha256 trailer, ``snapshot status``)."""


class SnapshotDigest:
    """The sha256 of a snapshot's bytes, taken as they pass (``update``), which also checks etcd's
    trailer on the way: the sha256 of all but the last 32 bytes seen is kept beside it. Given to the
    repository as the digest of the stream it stores, it checks the stored bytes themselves, with
    no second pass over them."""

    def __init__(self) -> None:
        self._db = hashlib.sha256()  # of every byte seen but the last TRAILER_SIZE
        self._tail = b""  # the last TRAILER_SIZE bytes seen (fewer at first)
        self.size = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self.size += len(data)
        if len(data) >= TRAILER_SIZE:
            self._db.update(self._tail)
            self._db.update(memoryview(data)[:-TRAILER_SIZE])
            self._tail = bytes(data[-TRAILER_SIZE:])
        else:
            held = self._tail + bytes(data)
            self._db.update(held[:-TRAILER_SIZE])
            self._tail = held[-TRAILER_SIZE:]

    def hexdigest(self) -> str:
        """The sha256 of every byte seen, trailer included."""
        whole = self._db.copy()
        whole.update(self._tail)
        return whole.hexdigest()

    def trailer(self, where: object) -> str:
        """Check etcd's trailer of the bytes seen: return it (hex), or raise CorruptSnapshotError when
        they are too few to be a snapshot or do not match it (a truncated or damaged snapshot).
        ``where`` names them in the error."""
        if self.size <= TRAILER_SIZE:
            raise CorruptSnapshotError(f"{where} holds {self.size} bytes: too short to be an etcd snapshot")
        if self._db.digest() != self._tail:
            raise CorruptSnapshotError(
                f"{where}: its sha256 trailer does not match its contents (a truncated or damaged snapshot)"
            )
        return self._tail.hex()


def verify_trailer(path: Path) -> str:
    """Check etcd's sha256 trailer of the snapshot file at ``path``; return the trailer (hex).

    Raises CorruptSnapshotError when the file is too short or its bytes do not match the trailer
    (a truncated or damaged transfer)."""
    digest = SnapshotDigest()
    for block in _blocks(path):
        digest.update(block)
    return digest.trailer(path)


def file_crc32(path: Path) -> tuple[int, int]:
    """(size, crc32) of the file at ``path``, in one pass: what a file that was read as it was
    written is compared with, to show it still holds the bytes read (a cheap check: crc32 runs at
    several GB/s, sha256 at about one)."""
    crc, size = 0, 0
    for block in _blocks(path):
        crc = zlib.crc32(block, crc)
        size += len(block)
    return size, crc


def _blocks(path: Path) -> Iterator[memoryview]:
    """The file at ``path`` a block at a time, read into one buffer (each block is valid until the
    next is read)."""
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    with path.open("rb") as handle:
        while got := handle.readinto(buffer):
            yield view[:got]


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
