"""Copy snapshots into a second repository (another site, account or key) without the sources.

Every chunk is read from the source repository and checked against its id (``read_chunk``), and
every entry's bytes against its SHA-256, then written into the target through the target's own codec
(its key, its compression). With other keys the chunk ids differ (HMAC ids): each source id is
mapped to the target's id and the copied entries and manifest name the target's. A snapshot's
manifest is written last, after every chunk it names is stored, so a copy that fails half-way
commits nothing for that snapshot (its chunks already written are left to the target's prune).

A rerun skips the snapshots the target holds already and does not write again the chunks it holds.
Memory stays at a window of chunks in flight and the entries being written (plus the set of the
target's chunk ids, as for a backup).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog

from backup.repository.manifest import ChunkRef, Entry, SnapshotHeader, manifest_key
from backup.repository.packs import ChunkSink
from backup.repository.repository import Repository, WriteStats
from backup.repository.store import put_bytes
from policies.errors import IntegrityError, LifeboatError, UsageError

log = structlog.get_logger(__name__)
CopyStatus = Literal["copied", "skipped", "failed"]


@dataclass
class SnapshotCopy:
    """What became of one snapshot: copied (with what it cost), skipped (the target has it), failed."""

    id: str
    source: str
    status: CopyStatus
    chunks_written: int = 0
    chunks_reused: int = 0
    bytes_written: int = 0
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "status": self.status,
            "chunks_written": self.chunks_written,
            "chunks_reused": self.chunks_reused,
            "bytes_written": self.bytes_written,
        }
        if self.message:
            document["message"] = self.message
        return document


@dataclass
class CopyReport:
    target: str
    snapshots: list[SnapshotCopy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(item.status != "failed" for item in self.snapshots)

    def count(self, status: CopyStatus) -> int:
        return sum(item.status == status for item in self.snapshots)

    @property
    def chunks_written(self) -> int:
        return sum(item.chunks_written for item in self.snapshots)

    @property
    def bytes_written(self) -> int:
        return sum(item.bytes_written for item in self.snapshots)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "copied": self.count("copied"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "chunks_written": self.chunks_written,
            "bytes_written": self.bytes_written,
            "snapshots": [item.as_dict() for item in self.snapshots],
        }


def copy_snapshots(
    source: Repository, target: Repository, headers: Iterable[SnapshotHeader], *, stale_after: float = 1800.0
) -> CopyReport:
    """Copy ``headers`` (snapshots of ``source``) into ``target``, oldest first, holding a shared lock
    on both (prune keeps away from the chunks read and reused). A snapshot that cannot be copied
    (a damaged chunk: IntegrityError naming it) is reported failed and the others go on; raises
    UsageError when both are the same repository, StoreError / RepositoryLocked for the stores."""
    if source.config.id == target.config.id:
        raise UsageError(f"{target.url} is the repository being copied ({source.url}): give another repository")
    report = CopyReport(target.url)
    with contextlib.ExitStack() as locks:
        locks.enter_context(source.lock("shared", f"copy to {target.url}", stale_after=stale_after))
        locks.enter_context(target.lock("shared", f"copy from {source.url}", stale_after=stale_after))
        present = set(target.snapshot_ids())
        known = target.stored_object_names()
        for header in sorted(headers, key=lambda item: (item.started, item.id)):
            if header.id in present:
                report.snapshots.append(SnapshotCopy(header.id, header.source, "skipped", message="in the target already"))
                continue
            report.snapshots.append(_copy_one(source, target, header, known))
    return report


def _copy_one(source: Repository, target: Repository, header: SnapshotHeader, known: set[str]) -> SnapshotCopy:
    stats = WriteStats()
    sink = target.new_sink(known)  # its own pack: a snapshot that fails leaves the next one whole
    try:
        with ThreadPoolExecutor(max_workers=source.workers, thread_name_prefix="lifeboat-copy") as pool:
            chunks = _ChunkCopier(source, target, pool, stats, sink, snapshot=header.id)
            entries = _EntriesWriter(target, stats, sink)
            for entry in source.entries(header):
                entries.add(chunks.copy_entry(entry))
            copied = replace(header, entries_chunks=entries.finish())
            target.seal(sink, stats)
            key = manifest_key(header.source, header.id)
            sealed = target.codec.encode(copied.to_json(), name=key)
            put_bytes(target.store, key, sealed)  # the commit point: every chunk it names is stored
            stats.add(stored=len(sealed))
    except LifeboatError as exc:
        log.error("copy.failed", snapshot=header.id, error=str(exc))
        failed = SnapshotCopy(header.id, header.source, "failed", message=str(exc))
        failed.chunks_written, failed.bytes_written = stats.chunks_new, stats.bytes_stored
        return failed
    log.info("copy.committed", snapshot=header.id, chunks_written=stats.chunks_new, bytes_written=stats.bytes_stored)
    return SnapshotCopy(
        header.id,
        header.source,
        "copied",
        chunks_written=stats.chunks_new,
        chunks_reused=stats.chunks_reused,
        bytes_written=stats.bytes_stored,
    )


class _ChunkCopier:
    """Reads and checks an entry's chunks from the source, stores them in the target, a window at a time."""

    def __init__(
        self,
        source: Repository,
        target: Repository,
        pool: ThreadPoolExecutor,
        stats: WriteStats,
        sink: ChunkSink,
        *,
        snapshot: str,
    ) -> None:
        self.source, self.target, self.pool, self.stats, self.sink = source, target, pool, stats, sink
        self.snapshot = snapshot
        self.window = source.workers * 2

    def copy_entry(self, entry: Entry) -> Entry:
        """The entry as the target names it; raises IntegrityError (a damaged chunk, or bytes that do
        not match the entry's SHA-256)."""
        digest = hashlib.sha256()
        size = 0
        refs: list[ChunkRef] = []
        for plaintext, ref in self._copied(entry.chunks):
            digest.update(plaintext)
            size += len(plaintext)
            refs.append(ref)
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"{entry.name}: its chunks do not add up to the entry's SHA-256 (snapshot {self.snapshot}); not copied"
            )
        return replace(entry, chunks=refs)

    def _copied(self, refs: list[ChunkRef]) -> Iterator[tuple[bytes, ChunkRef]]:
        pending: deque[Future[tuple[bytes, ChunkRef]]] = deque()
        try:
            for ref in refs:
                pending.append(self.pool.submit(self._copy_chunk, ref))
                if len(pending) >= self.window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def _copy_chunk(self, ref: ChunkRef) -> tuple[bytes, ChunkRef]:
        plaintext = self.source.read_chunk(ref, snapshot=self.snapshot)  # checked against its id
        # The target names it by its own id (its HMAC key) and place: the entry takes those.
        return plaintext, self.target.store_chunk(plaintext, self.stats, self.sink)


class _EntriesWriter:
    """The copied entries stream, stored through the target's chunk path as a backup writes it."""

    def __init__(self, target: Repository, stats: WriteStats, sink: ChunkSink) -> None:
        self.target, self.stats, self.sink = target, stats, sink
        self.buffer = bytearray()
        self.chunks: list[ChunkRef] = []

    def add(self, entry: Entry) -> None:
        self.buffer += entry.to_line()
        if len(self.buffer) >= self.target.config.chunk_size:
            self._flush()

    def finish(self) -> list[ChunkRef]:
        self._flush()
        return self.chunks

    def _flush(self) -> None:
        if self.buffer:
            self.chunks.append(self.target.store_chunk(bytes(self.buffer), self.stats, self.sink))
            self.buffer.clear()
