"""Packs: the small chunks of a write gathered into one store object (repository format 3).

A chunk stored as an object of its own costs a request, and on a local store two fsyncs (the file and
its directory), whatever its size: ten thousand 4 KiB model configs cost more in requests and fsyncs
than in bytes. So a write puts its chunks smaller than ``below`` (config.json ``packs.below``) into an
open pack, stored as one object ``packs/ab/<pack id>`` once it holds ``target`` bytes, and before the
write's manifest is committed (``ChunkSink.seal``).

A pack is sealed chunks one after another, each sealed alone exactly as a chunk object is (codec.py:
its own zstd frame and checksum; under encryption its own nonce, with its chunk id as associated
data), and nothing else. The reference in the manifest says where each one is (``[id, size, pack,
offset, length]``, manifest.ChunkRef), so a read is one ranged read of that chunk's bytes, verified
against its id like any chunk. A pack's id is random: it is named when it is opened, so a chunk's
reference is complete the moment it is packed.

Dedup: a chunk of its own is found by listing the store, as before. A packed chunk is found within
the write that packed it; in the previous snapshot of the source's entries stream (a backup of
unchanged data stores no new chunk) and, for etcd, its one entry (the file's tail); and a later
snapshot names it again when its source reuses the entry whole (an unchanged S3 object or ClickHouse
partition, known by its metadata). The same small bytes under a new name in a later run are packed
again: a few KiB, traded for not reading every pack's index at every start.

Prune deletes a pack when no snapshot names it any more (past the grace period); a pack that still
holds one used chunk is kept whole.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from backup.repository.manifest import ChunkRef
from policies.errors import StoreError


@dataclass(frozen=True)
class PackLayout:
    """Which chunks go into packs, and how big a pack grows before it is stored."""

    below: int  # chunks of fewer plaintext bytes are packed
    target: int  # a pack is stored once it holds this many bytes

    def to_json(self) -> dict[str, int]:
        return {"below": self.below, "target": self.target}


DEFAULT_LAYOUT = PackLayout(below=256 * 1024, target=4 * 1024 * 1024)


@dataclass(frozen=True)
class FullPack:
    """A pack closed for writing: its id and bytes, to be stored as one object."""

    id: str
    data: bytes


class PackFailed(StoreError):
    """A pack of this write could not be stored: chunks already referenced are lost, nothing commits."""


class Packer:
    """The open pack of one write, shared by its threads."""

    def __init__(self, layout: PackLayout) -> None:
        self.layout = layout
        self._lock = threading.Lock()
        self._id = _new_pack_id()
        self._buffer = bytearray()
        self._packed: dict[str, ChunkRef] = {}  # every chunk this write packed, by id
        self._failure: str | None = None

    def remember(self, refs: Iterable[ChunkRef]) -> None:
        """Let this write name packed chunks an earlier snapshot stored (their packs must be known to
        be in the store, under the write's lock)."""
        with self._lock:
            for ref in refs:
                self._packed.setdefault(ref.id, ref)

    def find(self, chunk_id: str) -> ChunkRef | None:
        """Where this write packed ``chunk_id`` already, if it did."""
        return self._packed.get(chunk_id)

    def add(self, chunk_id: str, size: int, sealed: bytes) -> tuple[ChunkRef, FullPack | None]:
        """Pack a sealed chunk: its reference, and the pack it filled (to be stored now), if any."""
        with self._lock:
            self._raise_if_failed()
            if known := self._packed.get(chunk_id):
                return known, None  # another thread packed the same bytes meanwhile
            ref = ChunkRef(chunk_id, size, self._id, len(self._buffer), len(sealed))
            self._buffer += sealed
            self._packed[chunk_id] = ref
            return ref, self._close() if len(self._buffer) >= self.layout.target else None

    def close(self) -> FullPack | None:
        """The open pack, closed for storing (None when it holds nothing); raises PackFailed when an
        earlier pack of this write failed, for its chunks' references would point at nothing."""
        with self._lock:
            self._raise_if_failed()
            return self._close()

    def failed(self, pack: FullPack, error: BaseException) -> None:
        """Record that ``pack`` was not stored: nothing this write references may commit."""
        with self._lock:
            self._failure = f"pack {pack.id} of this write could not be stored ({error})"

    def _close(self) -> FullPack | None:
        if not self._buffer:
            return None
        full = FullPack(self._id, bytes(self._buffer))
        self._id, self._buffer = _new_pack_id(), bytearray()
        return full

    def _raise_if_failed(self) -> None:
        if self._failure:
            raise PackFailed(f"{self._failure}: the chunks in it are lost, so nothing of this write can commit")


@dataclass
class ChunkSink:
    """Where one write's chunks go: the names of the chunk and pack objects the store held when the
    write began (its dedup; listed under a lock that keeps prune away), and its open pack (None in a
    format 1 or 2 repository: every chunk there is an object of its own)."""

    known: set[str]
    packer: Packer | None = None

    def holds(self, ref: ChunkRef) -> bool:
        """Whether the object that holds ``ref`` was in the store when the write began."""
        return (ref.pack or ref.id) in self.known

    def remember(self, refs: Iterable[ChunkRef]) -> None:
        """Dedup against packed chunks of an earlier snapshot (``refs``: its references) whose packs
        are still in the store: a chunk of the same bytes is then named where it is, not packed again."""
        if self.packer:
            self.packer.remember(ref for ref in refs if ref.pack and ref.pack in self.known)


def _new_pack_id() -> str:
    return secrets.token_hex(16)
