"""The repository: content-addressed chunks and snapshot manifests in a store (DESIGN section 3).

Layout under the store's prefix::

    config.json                                 format, id, chunk size, encryption parameters
    keys/<key id>.json                          the data key wrapped by one key file (keys.py)
    chunks/ab/<chunk id>                        one sealed chunk (see codec.py)
    packs/ab/<pack id>                          small sealed chunks, one after another (packs.py; format 3)
    snapshots/<source>/<snapshot id>.json.zst   a manifest: the commit point of a snapshot
    forgotten/<source>/<snapshot id>            a tombstone: forgotten, but its manifest is under Object Lock
    locks/<uuid>.json                           shared / exclusive locks (locks.py)
    drills/<drill>/<run id>.json                drill reports
    restore-points/<name>/<id>.json             restore points across sources (restore_points.py)
    parts/<source>/<run>/<i>of<n>.json.zst      part manifests of a sharded run, until merged (parts.py)

Chunking is fixed-size (1 MiB). Content-defined chunking only pays where bytes are inserted into
the middle of a stream, and none of our sources does that: an etcd snapshot is a bbolt file of
4 KiB pages changed in place (fixed boundaries line up with pages), ClickHouse partitions and S3
objects are reused whole by their metadata before any byte is read, and appends change only the
tail under either scheme. Fixed-size cuts cost nothing, where CDC's rolling hash is another pass
over every byte (tests/bench/bench_repository.py measures the write path against zstd alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, BinaryIO, Protocol, TypeVar

import structlog

from backup.repository.codec import KEY_BYTES, Codec, CorruptObject, Keys
from backup.repository.keys import WRAPPED_KEYS, RepositoryKeyError, unwrap_data_key, wrap, write_key
from backup.repository.locks import LockKind, list_locks, repository_lock
from backup.repository.manifest import (
    ChunkRef,
    Entry,
    SnapshotHeader,
    SnapshotStatus,
    chunk_key,
    manifest_key,
    new_snapshot_id,
    pack_key,
    parse_manifest_key,
    snapshot_source,
    snapshot_time,
)
from backup.repository.packs import DEFAULT_LAYOUT, ChunkSink, FullPack, Packer, PackLayout
from backup.repository.parts import PARTS_PREFIX, PartOf, Shard, StoredPart, parse_part_key, run_prefix
from backup.repository.retry import RetryingStore, RetryPolicy
from backup.repository.store import ObjectLockedError, ObjectNotFound, Store, get_bytes, put_bytes
from policies.errors import IntegrityError, LifeboatError, StoreError

# Format 2: zstd frames carry their checksum and manifests a SHA-256 line (codec.py, manifest.py).
# Format 3: small chunks go into packs (packs.py). A repository keeps the format it was made with:
# format 1 and 2 repositories open, read and take new snapshots as before (every chunk an object of
# its own), so a Lifeboat that reads only them keeps reading them; `repo init` makes format 3.
REPOSITORY_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
INTEGRITY = {
    "zstd_frames": "content checksum (format 2+)",
    "manifests": "SHA-256 line; id, source and entry totals checked on read (format 2+)",
}
CONFIG_KEY = "config.json"
CHUNK_SIZE = 1024 * 1024
DEFAULT_WORKERS = 4
_VERSION = "0.1.0"
log = structlog.get_logger(__name__)
T = TypeVar("T")


class RepositoryNotFound(StoreError):
    """No repository at the configured location (config.json is absent)."""


class SnapshotNotFound(LifeboatError):
    """No snapshot matches what was asked for."""


class DamagedManifest(IntegrityError):
    """A manifest that cannot be trusted: unreadable, holding another snapshot than its name says, or
    whose entries disagree with its header. ``snapshot`` is the id its name gives."""

    def __init__(self, message: str, *, snapshot: str) -> None:
        super().__init__(message)
        self.snapshot = snapshot


@dataclass(frozen=True)
class SnapshotListing:
    """The snapshots a listing could read, oldest first, and the manifests it could not."""

    headers: list[SnapshotHeader]
    damaged: list[DamagedManifest]


TOMBSTONE_PREFIX = "forgotten/"


def tombstone_key(source: str, snapshot_id: str) -> str:
    """Where the forget of a snapshot whose manifest is under Object Lock is recorded."""
    return f"{TOMBSTONE_PREFIX}{source}/{snapshot_id}"


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    created: str
    chunk_size: int
    compression_level: int
    encryption: dict[str, str] | None
    format: int = REPOSITORY_FORMAT
    packs: PackLayout | None = DEFAULT_LAYOUT  # None: every chunk an object of its own (formats 1 and 2)

    def to_json(self) -> bytes:
        doc = {
            "format": self.format,
            "id": self.id,
            "created": self.created,
            "chunker": {"kind": "fixed", "size": self.chunk_size},
            "compression": {"kind": "zstd", "level": self.compression_level},
            "encryption": self.encryption,
            "integrity": INTEGRITY,
        }
        if self.packs:
            doc["packs"] = self.packs.to_json()
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> RepositoryConfig:
        try:
            doc = json.loads(data)
            version = doc["format"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{where}: config.json is not a Lifeboat repository configuration") from None
        if version not in READABLE_FORMATS:
            readable = ", ".join(str(number) for number in READABLE_FORMATS)
            raise StoreError(
                f"{where}: repository format {version} is not one this Lifeboat ({_VERSION}) understands "
                f"(it reads formats {readable}); use a Lifeboat release that does"
            )
        try:
            packs = PackLayout(int(doc["packs"]["below"]), int(doc["packs"]["target"])) if version >= 3 else None
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"{where}: config.json of format {version} has no readable 'packs' section") from None
        chunker, level = doc["chunker"]["size"], doc["compression"]["level"]
        return cls(doc["id"], doc["created"], chunker, level, doc["encryption"], version, packs)


@dataclass
class WriteStats:
    """What a write cost: bytes read from the source, bytes and chunks newly stored."""

    bytes_read: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    written: set[str] = field(default_factory=set, repr=False, compare=False)  # keys of what it put (or tried)

    def add(self, *, read: int = 0, stored: int = 0, new: int = 0, reused: int = 0) -> None:
        with self._lock:
            self.bytes_read += read
            self.bytes_stored += stored
            self.chunks_new += new
            self.chunks_reused += reused


@dataclass(frozen=True)
class StoredStream:
    chunks: list[ChunkRef]
    size: int
    sha256: str


class StreamDigest(Protocol):
    """What takes a stored stream's sha256 as its bytes are read: hashlib's, or one that checks
    something of the stream on the way and gives the same sha256 (an etcd snapshot's trailer)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class Repository:
    """Chunks and snapshots in one store. Thread-safe; holds a small pool of transfer threads."""

    def __init__(
        self,
        store: Store,
        config: RepositoryConfig,
        codec: Codec,
        *,
        workers: int = DEFAULT_WORKERS,
        data_key: bytes | None = None,
        key_id: str | None = None,
    ):
        self.store = store
        self.config = config
        self.codec = codec
        self.data_key = data_key  # the master of codec's keys (key rotation wraps it: keys.py)
        self.key_id = key_id  # the key object the key file opened; None before key objects
        self.url = store.url
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lifeboat-chunk")
        # Chunks handed to the pool by every write_stream together, not by each: a source writing 16
        # streams at once (S3's parallel objects) held 16 windows, 128 MiB of blocks queued for 4 threads.
        self._writes_in_flight = threading.BoundedSemaphore(workers * 2)
        self._readers = 0  # iter_chunks generators reading now: they share the read-ahead
        self._readers_lock = threading.Lock()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def init(cls, store: Store, *, key: bytes | None = None, chunk_size: int = CHUNK_SIZE, level: int = 3) -> Repository:
        """Create a repository in an empty store; refuse if one is there already. With ``key`` (a key
        file's), it is encrypted with a new random data key that ``key`` wraps (keys.py)."""
        store = _retrying(store)
        if store.exists(CONFIG_KEY):
            raise StoreError(f"{store.url} already holds a repository (config.json exists); not touching it")
        repository_id = uuid.uuid4().hex
        encryption = None
        keys = data_key = identity = None
        if key is not None:
            salt, data_key = os.urandom(16), os.urandom(KEY_BYTES)
            keys = Keys.derive(data_key, salt)
            encryption = {
                "cipher": "AES-256-GCM",
                "kdf": "HKDF-SHA256",
                "salt": salt.hex(),
                "key_check": keys.check_value(),
                "wrapped_keys": WRAPPED_KEYS,
            }
            wrapped = wrap(data_key, key, repository_id=repository_id)
            write_key(store, wrapped)  # before config.json: a repository is there once config.json is
            identity = wrapped.id
        config = RepositoryConfig(repository_id, datetime.now(UTC).isoformat(), chunk_size, level, encryption)
        put_bytes(store, CONFIG_KEY, config.to_json())
        log.info("repository.created", url=store.url, encrypted=key is not None)
        return cls(store, config, Codec(keys, level=level), data_key=data_key, key_id=identity)

    @classmethod
    def open(cls, store: Store, *, key: bytes | None = None) -> Repository:
        """Open an existing repository with a key file's ``key``; raises StoreError (none there, unknown
        format) or RepositoryKeyError (missing, wrong or removed key)."""
        store = _retrying(store)
        try:
            raw = get_bytes(store, CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {store.url}: create it with `lifeboat repo init`") from None
        config = RepositoryConfig.from_json(raw, store.url)
        keys = data_key = identity = None
        if config.encryption:
            if key is None:
                raise RepositoryKeyError(f"{store.url} is encrypted: set repository.encryption.key_file")
            if config.encryption.get("wrapped_keys"):
                data_key, identity = unwrap_data_key(store, key, repository_id=config.id)
            else:  # made before key objects: the key file is the data key (keys.py)
                data_key = key
            keys = Keys.derive(data_key, bytes.fromhex(config.encryption["salt"]))
            if keys.check_value() != config.encryption["key_check"]:
                raise RepositoryKeyError(f"wrong repository key: it does not open {store.url}")
        elif key is not None:
            raise RepositoryKeyError(f"{store.url} is not encrypted, but a key file is configured: remove one or the other")
        return cls(store, config, Codec(keys, level=config.compression_level), data_key=data_key, key_id=identity)

    def with_store(self, wrap: Callable[[Store], Store], *, retry: RetryPolicy | None = None) -> Repository:
        """The same repository read through ``wrap(store)`` (the drills' fault injection sits there,
        between the retries and the real store). Close it when done."""
        inner = self.store.inner if isinstance(self.store, RetryingStore) else self.store
        store = RetryingStore(wrap(inner), retry) if retry else RetryingStore(wrap(inner))
        return Repository(store, self.config, self.codec, workers=self.workers, data_key=self.data_key, key_id=self.key_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- chunks ----------------------------------------------------------------------------

    def stored_objects(self) -> dict[str, int]:
        """Every chunk object and pack in the store: its key and size."""
        return {info.key: info.size for prefix in ("chunks/", "packs/") for info in self.store.list(prefix)}

    def stored_object_names(self) -> set[str]:
        """The names of the chunk objects and packs in the store (what a write's dedup starts from)."""
        return {key.rsplit("/", 1)[-1] for key in self.stored_objects()}

    def new_sink(self, known: set[str] | None = None) -> ChunkSink:
        """Where a new write's chunks go: ``known`` (default: listed now) and, from format 3, a pack."""
        layout = self.config.packs
        return ChunkSink(self.stored_object_names() if known is None else known, Packer(layout) if layout else None)

    def store_chunk(self, data: bytes, stats: WriteStats, sink: ChunkSink) -> ChunkRef:
        """Store one chunk unless the store or this write holds it already (dedup); return its
        reference. A small one goes into the write's open pack (stored when full, or by ``seal``).

        ``sink.known`` must have been listed under a lock that keeps prune away (see SnapshotWriter)."""
        chunk_id = self.codec.chunk_id(data)
        packer = sink.packer if sink.packer and len(data) < sink.packer.layout.below else None
        reused = ChunkRef(chunk_id, len(data)) if chunk_id in sink.known else packer.find(chunk_id) if packer else None
        if reused:
            stats.add(reused=1)
            return reused
        sealed = self.codec.encode(data, name=chunk_id)
        if packer:
            ref, full = packer.add(chunk_id, len(data), sealed)
            stats.add(new=1, stored=len(sealed))
            if full:
                self._store_pack(full, stats, packer)
            return ref
        key = chunk_key(chunk_id)
        with stats._lock:
            stats.written.add(key)  # before the put: a put that fails half-way may leave it behind
        put_bytes(self.store, key, sealed)
        sink.known.add(chunk_id)
        stats.add(stored=len(sealed), new=1)
        return ChunkRef(chunk_id, len(data))

    def seal(self, sink: ChunkSink, stats: WriteStats) -> None:
        """Store the write's open pack: after this every chunk it referenced is durable (call it
        before the manifest that names them); raises PackFailed when one of its packs was lost."""
        if sink.packer and (full := sink.packer.close()):
            self._store_pack(full, stats, sink.packer)

    def _store_pack(self, full: FullPack, stats: WriteStats, packer: Packer) -> None:
        key = pack_key(full.id)
        with stats._lock:
            stats.written.add(key)
        try:
            put_bytes(self.store, key, full.data)
        except BaseException as exc:
            packer.failed(full, exc)
            raise

    def write_stream(
        self,
        stream: BinaryIO,
        stats: WriteStats,
        sink: ChunkSink,
        *,
        progress: Callable[[int], None] | None = None,
        digest: StreamDigest | None = None,
    ) -> StoredStream:
        """Cut ``stream`` into chunks and store them in parallel; memory stays at a few chunks, for all
        the streams written at once together (a chunk waits for room before it is handed over; the
        room comes back when a chunk is stored, so no stream waits on another's reader). ``digest``
        takes the stream's sha256 (a new hashlib one unless given)."""
        if digest is None:
            digest = hashlib.sha256()
        size = 0
        window: deque[Future[ChunkRef]] = deque()
        chunks: list[ChunkRef] = []
        try:
            while block := _read_full(stream, self.config.chunk_size):
                digest.update(block)
                size += len(block)
                stats.add(read=len(block))
                window.append(self._submit_write(block, stats, sink))
                if len(window) >= self.workers * 2:
                    chunks.append(window.popleft().result())
                if progress:
                    progress(len(block))
            chunks.extend(future.result() for future in window)
            window.clear()
        finally:
            for future in window:
                future.cancel()
            wait(window)  # a put already running ends before a failed write's chunks are discarded
        return StoredStream(chunks, size, digest.hexdigest())

    def _submit_write(self, block: bytes, stats: WriteStats, sink: ChunkSink) -> Future[ChunkRef]:
        self._writes_in_flight.acquire()
        try:
            future = self._pool.submit(self.store_chunk, block, stats, sink)
        except BaseException:
            self._writes_in_flight.release()
            raise
        future.add_done_callback(lambda _: self._writes_in_flight.release())  # stored, failed or cancelled
        return future

    def verify_chunks(self, refs: Iterable[ChunkRef]) -> Iterator[tuple[ChunkRef, int | IntegrityError]]:
        """Read and re-hash chunks in parallel: (id, plaintext size) or (id, the integrity error), in
        the order they finish. A bounded window of reads is in flight, and a finished read keeps only
        the size: memory stays at a few chunks, whatever the repository's size."""
        window: dict[Future[int], ChunkRef] = {}
        try:
            for ref in refs:
                window[self._pool.submit(self._verified_size, ref)] = ref
                if len(window) >= self.workers * 2:
                    done, _ = wait(window, return_when=FIRST_COMPLETED)
                    yield from _verified(window, done)
            while window:
                done, _ = wait(window, return_when=FIRST_COMPLETED)
                yield from _verified(window, done)
        finally:
            for future in window:
                future.cancel()

    def _verified_size(self, ref: ChunkRef) -> int:
        return len(self.read_chunk(ref))

    def read_chunk(self, ref: ChunkRef, *, snapshot: str = "") -> bytes:
        """The verified plaintext of a chunk; raises IntegrityError naming the chunk and snapshot."""
        chunk_id = ref.id
        context = (f" (in pack {ref.pack})" if ref.pack else "") + (f" (snapshot {snapshot})" if snapshot else "")
        try:
            sealed = self.store.get_range(ref.key, ref.offset, ref.length) if ref.pack else get_bytes(self.store, ref.key)
        except ObjectNotFound:
            raise IntegrityError(f"chunk {chunk_id} is missing from the repository{context}") from None
        if ref.pack and len(sealed) != ref.length:
            raise IntegrityError(f"chunk {chunk_id} is corrupt: its pack ends before it (truncated){context}")
        try:
            plaintext = self.codec.decode(sealed, name=chunk_id)
        except CorruptObject as exc:
            raise IntegrityError(f"chunk {chunk_id} is corrupt: {exc}{context}") from None
        if self.codec.chunk_id(plaintext) != chunk_id:
            raise IntegrityError(f"chunk {chunk_id} is corrupt: its bytes no longer match its hash{context}")
        return plaintext

    def iter_chunks(self, refs: Iterable[ChunkRef], *, snapshot: str = "") -> Iterator[bytes]:
        """Verified chunk plaintexts in order, read ahead in parallel with a bounded window.

        The readers at once share the read-ahead: each reads ahead ``workers * 2`` chunks divided by
        how many read now (at least 2), so 16 objects restored at once hold 32 chunks, not 128
        (the pool reads ``workers`` at a time whatever the window). Never a wait on another reader:
        one thread may interleave several of these (a merge, entries while restoring one)."""
        window: deque[Future[bytes]] = deque()
        with self._readers_lock:
            self._readers += 1
        try:
            for ref in refs:
                window.append(self._pool.submit(self.read_chunk, ref, snapshot=snapshot))
                if len(window) >= max(2, self.workers * 2 // self._readers):
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            with self._readers_lock:
                self._readers -= 1
            for future in window:
                future.cancel()

    def restore_entry(self, entry: Entry, out: BinaryIO, *, snapshot: str = "") -> None:
        """Write an entry's bytes to ``out`` and prove they are the bytes that were backed up."""
        digest = hashlib.sha256()
        size = 0
        for block in self.iter_chunks(entry.chunks, snapshot=snapshot):
            digest.update(block)
            size += len(block)
            out.write(block)
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.name}: restored bytes do not match the snapshot's SHA-256 (snapshot {snapshot})")

    # ---- snapshots -------------------------------------------------------------------------

    def begin_snapshot(
        self, source: str, kind: str, *, stale_after: float = 1800.0, started: datetime | None = None
    ) -> SnapshotWriter:
        """A writer for a new snapshot; use it as a context manager (it holds a shared lock).
        ``started`` (default: now) is the snapshot's time; a merge of parts passes the earliest part's."""
        return SnapshotWriter(self, source, kind, stale_after=stale_after, started=started)

    def begin_part(self, source: str, kind: str, part: PartOf, *, stale_after: float = 1800.0) -> SnapshotWriter:
        """A writer for one shard's part of a sharded run (parts.py): like a snapshot's, but its
        ``shard`` is set (sources back up only that share) and it commits to the part's key."""
        return SnapshotWriter(self, source, kind, stale_after=stale_after, part=part)

    def list_parts(self, source: str | None = None, run: str | None = None) -> list[StoredPart]:
        """Part manifests in the store (of ``source``, of its ``run``), by source, run and shard."""
        prefix = run_prefix(source, run) if source and run else f"{PARTS_PREFIX}{source}/" if source else PARTS_PREFIX
        found = []
        for info in self.store.list(prefix):
            parsed = parse_part_key(info.key)
            if parsed is not None:
                found.append(StoredPart(parsed[0], parsed[1], info.key, info.modified))
        return sorted(found, key=lambda stored: (stored.source, stored.part.run, stored.part.shard))

    def read_document(
        self, key: str, parse: Callable[[bytes], T], *, missing: str, damaged: Callable[[str], IntegrityError]
    ) -> T:
        """A sealed document of the store (a manifest, a part's, a restore point's), decoded and
        ``parse``d; raises SnapshotNotFound(``missing``) when it is absent, ``damaged(why)`` when it
        cannot be decoded or parsed."""
        try:
            sealed = get_bytes(self.store, key)
        except ObjectNotFound:
            raise SnapshotNotFound(missing) from None
        try:
            return parse(self.codec.decode(sealed, name=key))
        except (CorruptObject, ValueError, KeyError, TypeError) as exc:
            raise damaged(str(exc)) from None

    def read_part(self, stored: StoredPart) -> SnapshotHeader:
        """A part's header; raises SnapshotNotFound (gone) or IntegrityError (unreadable)."""
        header = self.read_document(
            stored.key,
            SnapshotHeader.from_json,
            missing=f"no part {stored.part.shard} of run {stored.part.run} of '{stored.source}'",
            damaged=lambda why: IntegrityError(f"manifest of part {stored.key} is unreadable: {why}"),
        )
        if header.source != stored.source:
            raise IntegrityError(f"manifest of part {stored.key} is of source '{header.source}', not '{stored.source}'")
        return header

    def delete_part(self, stored: StoredPart) -> None:
        """Remove a part manifest; its chunks go at a later prune unless a snapshot uses them."""
        self.store.delete(stored.key)

    def snapshot_ids(self, source: str | None = None) -> list[str]:
        """Ids of committed snapshots, oldest first (ids sort by time within a source); forgotten ones
        whose manifest is still there (a tombstone, see ``forget``) are left out."""
        prefix = f"snapshots/{source}/" if source else "snapshots/"
        found = [parsed for info in self.store.list(prefix) if (parsed := parse_manifest_key(info.key))]
        forgotten = set(self.forgotten_ids(source)) if found else set()
        found = [(source_name, snapshot_id) for source_name, snapshot_id in found if snapshot_id not in forgotten]
        return [snapshot_id for _, snapshot_id in sorted(found, key=lambda pair: (pair[1].rsplit("-", 2)[-2], pair[1]))]

    def forgotten_ids(self, source: str | None = None) -> list[str]:
        """Ids of snapshots forgotten while their manifest was under Object Lock (their tombstones)."""
        prefix = f"{TOMBSTONE_PREFIX}{source}/" if source else TOMBSTONE_PREFIX
        return sorted(info.key.rsplit("/", 1)[-1] for info in self.store.list(prefix) if info.key.count("/") == 2)

    def read_header(self, snapshot_id: str) -> SnapshotHeader:
        try:
            source = snapshot_source(snapshot_id)
        except ValueError as exc:
            raise SnapshotNotFound(str(exc)) from None
        key = manifest_key(source, snapshot_id)
        header = self.read_document(
            key,
            SnapshotHeader.from_json,
            missing=f"no snapshot {snapshot_id} in {self.url}",
            damaged=lambda why: DamagedManifest(
                f"manifest {key} of snapshot {snapshot_id} is unreadable: {why}", snapshot=snapshot_id
            ),
        )
        if header.id != snapshot_id or header.source != source:
            raise DamagedManifest(
                f"manifest {key} holds snapshot {header.id} of source '{header.source}', not {snapshot_id}: it was "
                "copied over another snapshot's file; refusing to use it",
                snapshot=snapshot_id,
            )
        return header

    def scan_snapshots(self, source: str | None = None) -> SnapshotListing:
        """Every committed snapshot's header, oldest first (by start time: ids only have seconds), and
        the manifests that could not be read apart; raises StoreError when the listing itself fails."""
        headers: list[SnapshotHeader] = []
        damaged: list[DamagedManifest] = []
        for snapshot_id in self.snapshot_ids(source):
            try:
                headers.append(self.read_header(snapshot_id))
            except SnapshotNotFound:
                continue  # forgotten since the listing
            except DamagedManifest as exc:
                damaged.append(exc)
        return SnapshotListing(sorted(headers, key=lambda header: (header.started, header.id)), damaged)

    def list_snapshots(self, source: str | None = None) -> list[SnapshotHeader]:
        """Headers of committed snapshots, oldest first; a damaged manifest is left out with a warning
        (``check`` reports it, ``prune --forget-damaged`` removes it)."""
        listing = self.scan_snapshots(source)
        for damaged in listing.damaged:
            log.warning("snapshot.damaged", snapshot=damaged.snapshot, error=str(damaged), advice=_DAMAGED_ADVICE)
        return listing.headers

    def entries(self, header: SnapshotHeader) -> Iterator[Entry]:
        """A snapshot's entries, streamed: one chunk of the entries stream in memory at a time.

        Read to its end, it raises DamagedManifest if the entries are not the count and bytes the header
        promises (a manifest edited, or pointed at another snapshot's entries): a restore that wrote
        them all fails instead of reporting them verified."""
        pending = b""
        count = size = 0
        for block in self.iter_chunks(header.entries_chunks, snapshot=header.id):
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line:
                    entry = _entry(line, header)
                    count, size = count + 1, size + entry.size
                    yield entry
        if pending:
            entry = _entry(pending, header)
            count, size = count + 1, size + entry.size
            yield entry
        if (count, size) != (header.entry_count, header.size):
            raise DamagedManifest(
                f"snapshot {header.id}: its entries are {count} items of {size} bytes, but its manifest promises "
                f"{header.entry_count} of {header.size}: the manifest was edited or its entries are another "
                "snapshot's; what was read from it cannot be trusted",
                snapshot=header.id,
            )

    def find_snapshot(self, source: str, *, snapshot: str = "latest", at: datetime | None = None) -> SnapshotHeader:
        """``latest`` good snapshot of ``source`` (at or before ``at`` when given), or one by id."""
        if snapshot != "latest":
            with contextlib.suppress(ValueError):
                if self.store.exists(tombstone_key(snapshot_source(snapshot), snapshot)):
                    raise SnapshotNotFound(
                        f"snapshot {snapshot} was forgotten by prune in {self.url} (its manifest stays until its Object "
                        "Lock retention ends)"
                    )
            header = self.read_header(snapshot)
            if header.source != source:
                raise SnapshotNotFound(f"snapshot {snapshot} belongs to source '{header.source}', not '{source}'")
            return header
        best: SnapshotHeader | None = None
        for snapshot_id in reversed(self.snapshot_ids(source)):
            second = snapshot_time(snapshot_id)
            if at is not None and second > at:
                continue  # started in a later second than ``at``: too new, no need to read it
            if best is not None and second < best.started.replace(microsecond=0):
                break  # ids sort by second; within one second only the headers know the order
            try:
                header = self.read_header(snapshot_id)
            except DamagedManifest as exc:  # one bad manifest must not stop a source: take an older one
                log.warning("snapshot.damaged", snapshot=snapshot_id, error=str(exc), advice=_DAMAGED_ADVICE)
                continue
            fits = header.status == "good" and (at is None or header.started <= at)
            if fits and (best is None or header.started > best.started):
                best = header
        if best is not None:
            return best
        when = f" at or before {at.isoformat()}" if at else ""
        raise SnapshotNotFound(f"no good snapshot of source '{source}'{when} in {self.url}")

    def forget(self, header: SnapshotHeader) -> bool:
        """Remove a snapshot's manifest; its chunks go at the next prune after the grace period.

        True when the manifest is gone. False when it is under Object Lock: then a tombstone records
        the forget (listings, ``find_snapshot`` and retention no longer see the snapshot), and
        ``delete_forgotten`` removes both once the retention has ended."""
        return self.forget_id(header.id)

    def forget_id(self, snapshot_id: str) -> bool:
        """``forget`` by id, without reading the manifest (a damaged one)."""
        source = snapshot_source(snapshot_id)
        try:
            self.store.delete(manifest_key(source, snapshot_id))
        except ObjectLockedError as exc:
            record = {"snapshot": snapshot_id, "forgotten": datetime.now(UTC).isoformat(), "manifest": str(exc)}
            put_bytes(self.store, tombstone_key(source, snapshot_id), json.dumps(record).encode())
            log.info("snapshot.forgotten_locked", snapshot=snapshot_id, reason=str(exc))
            return False
        return True

    def delete_forgotten(self) -> tuple[list[str], list[str]]:
        """Delete the manifests of snapshots forgotten under Object Lock whose retention has ended, and
        their tombstones; returns (deleted, still locked) snapshot ids."""
        deleted: list[str] = []
        locked: list[str] = []
        for snapshot_id in self.forgotten_ids():
            try:
                source = snapshot_source(snapshot_id)
            except ValueError:
                continue  # not a tombstone of ours
            try:
                self.store.delete(manifest_key(source, snapshot_id))
            except ObjectLockedError:
                locked.append(snapshot_id)
                continue
            self.store.delete(tombstone_key(source, snapshot_id))  # after the manifest: a crash between leaves it hidden
            deleted.append(snapshot_id)
        return deleted, locked

    def commit_marks(self) -> frozenset[tuple[str, int, datetime]]:
        """Every snapshot and part manifest as (key, size, modified), by the store's own clock: what
        one of these has that an earlier one lacks was committed (or rewritten) in between."""
        return frozenset(
            (info.key, info.size, info.modified)
            for prefix in ("snapshots/", PARTS_PREFIX)
            for info in self.store.list(prefix)
        )

    def discard_failed_write(
        self, written: Iterable[str], marks: frozenset[tuple[str, int, datetime]], *, purpose: str, stale_after: float
    ) -> int:
        """Delete at once the chunk and pack objects (``written``: their keys) a write that failed
        stored new, when nothing else can use them; returns how many went (0: they are left to prune,
        after its grace period).

        Called after the failed writer released its shared lock. The chunks were absent from the
        store when the writer listed it (or it would have reused them), so the only ones that can
        name them are writers that found them in the store after they were written, or wrote the
        same bytes themselves, while this one ran. Such a writer either still holds its lock, or has
        committed a manifest since ``marks`` was taken (before the writer's chunk listing), or failed
        too. So they are deleted only when no other lock is there at all (not even a stale one: its
        process may only be paused), no manifest is new since ``marks``, and under an exclusive lock
        (no writer can start and find them meanwhile). Otherwise prune removes them once they are
        past its grace period, as it does for any unreferenced chunk.
        """
        chunks = sorted(set(written))
        try:
            if others := list_locks(self.store):
                return _left_to_prune(chunks, f"{others[0].describe()} may use them")
            with self.lock("exclusive", f"discard the chunks of the failed {purpose}", stale_after=stale_after):
                if fresh := sorted(key for key, _, _ in self.commit_marks() - marks):
                    return _left_to_prune(chunks, f"{fresh[0]} was committed meanwhile and may use them")
                deleted = 0
                for key in chunks:
                    with contextlib.suppress(ObjectLockedError):  # under Object Lock: prune takes it later
                        self.store.delete(key)
                        deleted += 1
        except LifeboatError as exc:
            return _left_to_prune(chunks, str(exc))
        log.info("chunks.discarded", purpose=purpose, chunks=deleted)
        return deleted

    # ---- locks -----------------------------------------------------------------------------

    def lock(self, kind: LockKind, purpose: str, *, stale_after: float = 1800.0) -> contextlib.AbstractContextManager[Any]:
        return repository_lock(self.store, kind, purpose, stale_after=stale_after)


class SnapshotWriter:
    """Collects a snapshot's entries (thread-safe) and commits its manifest last.

    Used as a context manager it holds a shared repository lock, so prune cannot delete a chunk
    that this snapshot found in the store and chose to reuse instead of uploading again.
    """

    def __init__(
        self,
        repository: Repository,
        source: str,
        kind: str,
        *,
        stale_after: float,
        started: datetime | None = None,
        part: PartOf | None = None,
    ) -> None:
        self.repository = repository
        self._stale_after = stale_after
        self._exit = contextlib.ExitStack()
        self._sink: ChunkSink | None = None
        self._marks: frozenset[tuple[str, int, datetime]] = frozenset()
        self._committed = False
        self.source = source
        self.kind = kind
        self.part = part
        self.started = started or datetime.now(UTC)
        self.id = new_snapshot_id(source, self.started)
        self.stats = WriteStats()
        self._buffer = bytearray()
        self._entries_chunks: list[ChunkRef] = []
        self._count = 0
        self._size = 0
        self._lock = threading.Lock()

    @property
    def shard(self) -> Shard | None:
        """The share of the source this writer takes (a part of a sharded run), None for all of it."""
        return self.part.shard if self.part else None

    @property
    def _purpose(self) -> str:
        return f"backup {self.source}" + (f" shard {self.part.shard}" if self.part else "")

    def __enter__(self) -> SnapshotWriter:
        self._exit.enter_context(self.repository.lock("shared", self._purpose, stale_after=self._stale_after))
        self._marks = self.repository.commit_marks()  # before the chunk listing: see discard_failed_write
        self._sink = self.repository.new_sink()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        """Release the lock; after a failure before the commit, remove the chunks this write stored
        new when no other writer can use them (``Repository.discard_failed_write``), so a failed
        backup on a full disk frees the disk at once."""
        try:
            self._exit.close()
        finally:
            if kind is not None and not self._committed and self.stats.written:
                self.repository.discard_failed_write(
                    self.stats.written, self._marks, purpose=self._purpose, stale_after=self._stale_after
                )

    @property
    def sink(self) -> ChunkSink:
        if self._sink is None:
            raise RuntimeError("use the SnapshotWriter as a context manager: it must hold the repository lock")
        return self._sink

    def write_stream(
        self, stream: BinaryIO, *, progress: Callable[[int], None] | None = None, digest: StreamDigest | None = None
    ) -> StoredStream:
        return self.repository.write_stream(stream, self.stats, self.sink, progress=progress, digest=digest)

    def remember(self, refs: Iterable[ChunkRef]) -> None:
        """Reuse the packed chunks among ``refs`` (an earlier snapshot's) that are still stored."""
        self.sink.remember(refs)

    def add(self, entry: Entry) -> None:
        with self._lock:
            self._buffer += entry.to_line()
            self._count += 1
            self._size += entry.size
            if len(self._buffer) >= self.repository.config.chunk_size:
                self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._entries_chunks.append(self.repository.store_chunk(bytes(self._buffer), self.stats, self.sink))
            self._buffer.clear()

    def commit(
        self,
        *,
        status: SnapshotStatus = "good",
        fingerprint: dict[str, Any] | None = None,
        census: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotHeader:
        """Write the manifest. Every chunk it names is durable by now, so this is the commit point."""
        with self._lock:
            self._flush()
            self.repository.seal(self.sink, self.stats)
            header = SnapshotHeader(
                id=self.id,
                source=self.source,
                kind=self.kind,
                started=self.started,
                finished=datetime.now(UTC),
                status=status,
                tool_version=_VERSION,
                entry_count=self._count,
                size=self._size,
                entries_chunks=list(self._entries_chunks),
                fingerprint=fingerprint or {},
                census=census or {},
                meta=meta or {},
            )
            key = self.part.key(self.source) if self.part else manifest_key(self.source, self.id)
            sealed = self.repository.codec.encode(header.to_json(), name=key)
            put_bytes(self.repository.store, key, sealed)
            self._committed = True
            self.stats.add(stored=len(sealed))
        event = "part.committed" if self.part else "snapshot.committed"
        log.info(event, snapshot=self.id, source=self.source, entries=self._count, status=status, key=key)
        return header


_DAMAGED_ADVICE = "left out; `lifeboat check` names it, `lifeboat prune --forget-damaged` removes it"


def _verified(
    window: dict[Future[int], ChunkRef], done: Iterable[Future[int]]
) -> Iterator[tuple[ChunkRef, int | IntegrityError]]:
    """The finished reads of ``verify_chunks``, each taken out of its window."""
    for future in done:
        ref = window.pop(future)
        try:
            yield ref, future.result()
        except IntegrityError as exc:
            yield ref, exc


def _left_to_prune(chunks: list[str], why: str) -> int:
    log.info("chunks.left_to_prune", chunks=len(chunks), reason=why)
    return 0


def _entry(line: bytes, header: SnapshotHeader) -> Entry:
    try:
        return Entry.from_line(line)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DamagedManifest(f"snapshot {header.id}: an entry is unreadable: {exc}", snapshot=header.id) from None


def _retrying(store: Store) -> Store:
    return store if isinstance(store, RetryingStore) else RetryingStore(store)


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes unless the stream ends first: pipes and sockets return short reads, and
    chunk boundaries must not depend on them (or the same data would chunk differently)."""
    first = stream.read(size)
    if not first or len(first) == size:
        return first
    parts = [first]
    missing = size - len(first)
    while missing and (more := stream.read(missing)):
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)
