"""The repository over a local directory: round trips, dedup, encryption, integrity, locks, check, prune."""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pytest
from helpers import rewrite_manifest

from backup.repository.locks import RepositoryLocked
from backup.repository.maintenance import PruneRefused, check, prune
from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import (
    CONFIG_KEY,
    Repository,
    RepositoryKeyError,
    RepositoryNotFound,
    SnapshotNotFound,
    chunk_key,
)
from backup.repository.store import LocalStore
from policies.errors import IntegrityError, StoreError
from policies.model import Retention

MiB = 1024 * 1024


def mixed_data(size: int, seed: int = 1) -> bytes:
    """Half compressible text, half random bytes: what the repository sees in practice."""
    rng = random.Random(seed)
    text = b"".join(b"feature_%d,%d,user-%d\n" % (i, rng.randrange(1000), i % 97) for i in range(size // 40))
    return (text[: size // 2] + rng.randbytes(size - size // 2))[:size]


@pytest.fixture(params=["plain", "encrypted"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    key = os.urandom(32) if request.param == "encrypted" else None
    repository = Repository.init(LocalStore(tmp_path / "repo"), key=key)
    yield repository
    repository.close()


def backup_bytes(repo: Repository, data: bytes, *, source: str = "src", name: str = "blob", status: str = "good"):
    with repo.begin_snapshot(source, "test") as writer:
        stored = writer.write_stream(io.BytesIO(data))
        writer.add(Entry(name, stored.size, stored.sha256, stored.chunks, {"note": "ünïcode"}))
        header = writer.commit(status=status, fingerprint={"sha256": stored.sha256})  # type: ignore[arg-type]
    return header, writer.stats


def restore_bytes(repo: Repository, header: SnapshotHeader) -> bytes:
    [entry] = list(repo.entries(header))
    out = io.BytesIO()
    repo.restore_entry(entry, out, snapshot=header.id)
    return out.getvalue()


def stored_chunk_path(repo: Repository, index: int = 0) -> Path:
    store = repo.store.inner  # type: ignore[attr-defined]
    paths = sorted((store.root / "chunks").rglob("*"))
    return [p for p in paths if p.is_file()][index]


# ---- opening ------------------------------------------------------------------------------------


def test_init_refuses_an_existing_repository(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path)).close()
    with pytest.raises(StoreError, match="already holds a repository"):
        Repository.init(LocalStore(tmp_path))


def test_open_without_a_repository_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound, match="lifeboat repo init"):
        Repository.open(LocalStore(tmp_path))


def test_unknown_format_version_fails_clearly(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path)).close()
    config = json.loads((tmp_path / CONFIG_KEY).read_text())
    config["format"] = 99
    (tmp_path / CONFIG_KEY).write_text(json.dumps(config))
    with pytest.raises(StoreError, match="repository format 99 is not one this Lifeboat"):
        Repository.open(LocalStore(tmp_path))


def test_wrong_or_missing_key(tmp_path: Path) -> None:
    Repository.init(LocalStore(tmp_path), key=os.urandom(32)).close()
    with pytest.raises(RepositoryKeyError, match="wrong repository key"):
        Repository.open(LocalStore(tmp_path), key=os.urandom(32))
    with pytest.raises(RepositoryKeyError, match="is encrypted"):
        Repository.open(LocalStore(tmp_path))


# ---- writing and reading ------------------------------------------------------------------------


def test_round_trip_is_byte_identical(repo: Repository) -> None:
    data = mixed_data(5 * MiB + 12345)
    header, stats = backup_bytes(repo, data)
    assert stats.bytes_read == len(data)
    assert header.size == len(data) and header.entry_count == 1
    assert restore_bytes(repo, repo.read_header(header.id)) == data
    [entry] = list(repo.entries(header))
    assert entry.meta == {"note": "ünïcode"}


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Repository, bytes]]:
    key = os.urandom(32)
    repository = Repository.init(LocalStore(tmp_path / "repo"), key=key)
    yield repository, key
    repository.close()


def test_encrypted_repository_reopens_with_its_key(keyed: tuple[Repository, bytes], tmp_path: Path) -> None:
    repo, key = keyed
    data = mixed_data(2 * MiB)
    header, _ = backup_bytes(repo, data)
    with Repository.open(LocalStore(tmp_path / "repo"), key=key) as reopened:
        assert restore_bytes(reopened, reopened.read_header(header.id)) == data


def test_encrypted_chunks_hide_the_plaintext(keyed: tuple[Repository, bytes], tmp_path: Path) -> None:
    repo, _ = keyed
    secret_line = b"password=hunter2-very-secret\n" * 2000
    backup_bytes(repo, secret_line, name="secrets.txt")
    everything = b"".join(p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert b"hunter2" not in everything and b"secrets.txt" not in everything


def test_empty_stream(repo: Repository) -> None:
    header, _ = backup_bytes(repo, b"")
    assert restore_bytes(repo, header) == b""


def test_second_backup_of_the_same_data_stores_almost_nothing(repo: Repository) -> None:
    data = mixed_data(8 * MiB)
    _, first = backup_bytes(repo, data)
    _, second = backup_bytes(repo, data)
    assert first.chunks_new == 9  # eight data chunks and the entries stream
    # The entries stream is a small chunk, in a pack: here it is stored again, since only a backup
    # run (backup/jobs.py) hands the writer the previous snapshot to reuse it from (packs.py).
    assert second.chunks_new == 1 and second.chunks_reused == 8
    assert second.bytes_stored < 0.01 * len(data)  # the entries stream and the manifest only


def test_a_write_reuses_the_packed_chunks_of_a_snapshot_it_remembers(repo: Repository) -> None:
    data = mixed_data(8 * MiB + 1000)  # a 1000-byte tail: packed
    first, _ = backup_bytes(repo, data)
    with repo.begin_snapshot("src", "test") as writer:
        writer.remember(first.entries_chunks)
        writer.remember(ref for entry in repo.entries(first) for ref in entry.chunks)
        stored = writer.write_stream(io.BytesIO(data))
        writer.add(Entry("blob", stored.size, stored.sha256, stored.chunks, {"note": "ünïcode"}))
        second = writer.commit(fingerprint={"sha256": stored.sha256})
    assert writer.stats.chunks_new == 0 and writer.stats.chunks_reused == 10
    assert second.entries_chunks == first.entries_chunks and restore_bytes(repo, second) == data


def test_a_changed_region_stores_only_its_chunks(repo: Repository) -> None:
    data = bytearray(mixed_data(8 * MiB))
    backup_bytes(repo, bytes(data))
    data[3 * MiB + 100 : 3 * MiB + 200] = os.urandom(100)
    header, stats = backup_bytes(repo, bytes(data))
    assert stats.chunks_new == 2  # the changed chunk, and the entries stream naming it
    assert restore_bytes(repo, header) == bytes(data)


def test_short_reads_do_not_change_chunk_boundaries(repo: Repository) -> None:
    class Trickle(io.RawIOBase):
        """A pipe-like stream that returns at most 1000 bytes per read."""

        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self.data.read(min(size, 1000) if size > 0 else 1000)

    data = mixed_data(3 * MiB)
    backup_bytes(repo, data)
    with repo.begin_snapshot("src", "test") as writer:
        stored = writer.write_stream(Trickle(data))  # type: ignore[arg-type]
    assert writer.stats.chunks_new == 0 and stored.size == len(data)


def test_a_million_entries_stream_through_a_few_chunks(repo: Repository) -> None:
    count = 60_000
    with repo.begin_snapshot("big", "test") as writer:
        empty = writer.write_stream(io.BytesIO(b""))
        for i in range(count):
            writer.add(Entry(f"bucket/key-{i:07d}", 0, empty.sha256, [], {"etag": f"{i:x}"}))
        header = writer.commit()
    assert header.entry_count == count and len(header.entries_chunks) >= 2
    names = [entry.name for entry in repo.entries(repo.read_header(header.id))]
    assert names == [f"bucket/key-{i:07d}" for i in range(count)]


# ---- integrity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "swap"])
def test_damaged_chunks_are_never_restored(repo: Repository, damage: str) -> None:
    header, _ = backup_bytes(repo, mixed_data(3 * MiB))
    [entry] = list(repo.entries(header))
    victim_id = entry.chunks[1][0]
    path = repo.store.inner.root / chunk_key(victim_id)  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "delete":
        path.unlink()
    else:  # another chunk's valid bytes under this chunk's name
        path.write_bytes((repo.store.inner.root / chunk_key(entry.chunks[0][0])).read_bytes())  # type: ignore[attr-defined]
    out = io.BytesIO()
    with pytest.raises(IntegrityError) as caught:
        repo.restore_entry(entry, out, snapshot=header.id)
    assert victim_id in str(caught.value) and header.id in str(caught.value)
    assert ("missing" if damage == "delete" else "corrupt" if damage != "swap" else victim_id) in str(caught.value)
    assert len(out.getvalue()) <= 1 * MiB  # nothing past the damaged chunk was written


def test_an_entry_whose_chunks_do_not_make_its_bytes_is_never_restored_nor_copied(repo: Repository, tmp_path: Path) -> None:
    """Every chunk is whole, but the manifest names two of them in the wrong order (a writer's bug,
    or a manifest rewritten with its checksum made to match): only the entry's SHA-256 can tell."""
    from backup.repository.copy import copy_snapshots

    with repo.begin_snapshot("src", "test") as writer:
        stored = writer.write_stream(io.BytesIO(mixed_data(3 * MiB)))
        swapped = [stored.chunks[1], stored.chunks[0], *stored.chunks[2:]]
        writer.add(Entry("blob", stored.size, stored.sha256, swapped))
        header = writer.commit()
    [entry] = list(repo.entries(header))
    with pytest.raises(IntegrityError, match="blob: restored bytes do not match the snapshot's SHA-256"):
        repo.restore_entry(entry, io.BytesIO(), snapshot=header.id)
    target = Repository.init(LocalStore(tmp_path / "target"))
    try:
        [copied] = copy_snapshots(repo, target, [header]).snapshots
        assert copied.status == "failed", copied
        assert "blob: its chunks do not add up to the entry's SHA-256" in copied.message
        assert target.snapshot_ids() == []
    finally:
        target.close()


def test_a_manifest_whose_entries_do_not_parse_is_refused_naming_the_snapshot(repo: Repository) -> None:
    """A manifest pointed at chunks that hold no entries (whole chunks of other bytes): reading its
    entries fails as a damaged manifest of that snapshot, never as a crash or an empty snapshot."""
    promised, _ = backup_bytes(repo, mixed_data(MiB // 2))
    other, _ = backup_bytes(repo, b"not an entry\n", name="c")
    [garbage] = list(repo.entries(other))
    rewrite_manifest(repo, replace(promised, entries_chunks=garbage.chunks))
    with pytest.raises(IntegrityError, match=f"snapshot {promised.id}: an entry is unreadable"):
        list(repo.entries(repo.read_header(promised.id)))


def test_zstd_frames_carry_a_checksum_and_must_end_with_the_object() -> None:
    import zstandard

    from backup.repository.codec import ZSTD, Codec, CorruptObject

    codec = Codec(None)
    plaintext = b"feature,value\n" * 1000
    stored = codec.encode(plaintext, name="x")
    assert stored[0] == ZSTD and zstandard.get_frame_parameters(stored[1:]).has_checksum
    old = bytes([ZSTD]) + zstandard.ZstdCompressor(level=3).compress(plaintext)  # repository format 1
    assert codec.decode(old, name="x") == plaintext
    for damaged in (stored[:-3], stored + b"\x00\x00", stored[:-1] + bytes([stored[-1] ^ 1])):
        with pytest.raises(CorruptObject):
            codec.decode(damaged, name="x")


# ---- snapshots ----------------------------------------------------------------------------------


def test_find_snapshot_latest_good_and_before_a_time(repo: Repository) -> None:
    first, _ = backup_bytes(repo, b"one")
    time.sleep(1.1)  # snapshot ids have one-second resolution
    second, _ = backup_bytes(repo, b"two")
    time.sleep(1.1)
    backup_bytes(repo, b"three", status="suspicious")
    assert repo.find_snapshot("src").id == second.id
    assert repo.find_snapshot("src", at=first.started + timedelta(milliseconds=500)).id == first.id
    assert repo.find_snapshot("src", snapshot=first.id).id == first.id
    with pytest.raises(SnapshotNotFound, match="no good snapshot of source 'src' at or before"):
        repo.find_snapshot("src", at=first.started - timedelta(days=1))
    with pytest.raises(SnapshotNotFound, match="belongs to source 'src'"):
        repo.find_snapshot("other", snapshot=first.id)
    with pytest.raises(SnapshotNotFound, match="no snapshot"):
        repo.read_header("src-20200101T000000Z-abcd")
    assert [h.status for h in repo.list_snapshots("src")] == ["good", "good", "suspicious"]


# ---- locks --------------------------------------------------------------------------------------


def test_shared_locks_coexist_and_exclude_prune(repo: Repository) -> None:
    with repo.lock("shared", "backup a"), repo.lock("shared", "backup b"):
        with pytest.raises(RepositoryLocked, match="shared lock for backup"), repo.lock("exclusive", "prune"):
            pass
    with repo.lock("exclusive", "prune"):
        with pytest.raises(RepositoryLocked, match="exclusive lock for prune"), repo.begin_snapshot("src", "test"):
            pass
    assert list(repo.store.list("locks/")) == []


def test_stale_lock_is_broken_and_a_live_one_is_kept_alive_by_its_heartbeat(repo: Repository) -> None:
    store = repo.store
    store.put("locks/dead.json", io.BytesIO(b'{"kind":"exclusive","purpose":"prune","host":"gone","pid":1,"created":"x"}'))
    old = time.time() - 3600
    os.utime(store.inner.root / "locks" / "dead.json", (old, old))  # type: ignore[attr-defined]
    report = check(repo, stale_after=60)
    assert [p.kind for p in report.problems] == ["stale-lock"] and "gone" in report.problems[0].message
    with repo.lock("shared", "backup", stale_after=60):
        assert not store.exists("locks/dead.json")
    with repo.lock("shared", "backup", stale_after=0.6):
        time.sleep(1.5)  # longer than stale_after: only the heartbeat keeps it fresh
        with pytest.raises(RepositoryLocked), repo.lock("exclusive", "prune", stale_after=0.6):
            pass


# ---- check --------------------------------------------------------------------------------------


def test_check_finds_missing_and_corrupt_chunks(repo: Repository) -> None:
    header, _ = backup_bytes(repo, mixed_data(3 * MiB))
    assert check(repo).ok and check(repo, read_data=1.0).chunks_read == 4
    [entry] = list(repo.entries(header))
    missing, corrupt = entry.chunks[0][0], entry.chunks[2][0]
    root = repo.store.inner.root  # type: ignore[attr-defined]
    (root / chunk_key(missing)).unlink()
    path = root / chunk_key(corrupt)
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0xFF]))
    quick = check(repo)
    assert [(p.kind, p.chunk, p.snapshot) for p in quick.problems] == [("missing-chunk", missing, header.id)]
    full = check(repo, read_data=1.0)
    kinds = sorted((p.kind, p.chunk) for p in full.problems)
    assert kinds == sorted([("missing-chunk", missing), ("corrupt-chunk", corrupt)])
    assert header.id in next(p.message for p in full.problems if p.kind == "corrupt-chunk")


def test_check_subset_reads_a_different_share_each_run(repo: Repository) -> None:
    backup_bytes(repo, mixed_data(20 * MiB))
    runs = [check(repo, read_data=0.25).chunks_read for _ in range(3)]
    assert runs == [5, 5, 5]  # 21 chunks (20 data + entries stream) -> 25% = 5


# ---- prune --------------------------------------------------------------------------------------


def test_prune_applies_retention_and_waits_for_the_grace_period(repo: Repository) -> None:
    headers = []
    for i in range(3):
        headers.append(backup_bytes(repo, mixed_data(2 * MiB, seed=i))[0])
        time.sleep(1.1)
    rules = {"src": Retention(keep_last=1)}
    preview = prune(repo, rules, grace=timedelta(hours=24), dry_run=True)
    assert preview.forgotten == [headers[1].id, headers[0].id] and preview.kept == [headers[2].id]
    assert len(repo.snapshot_ids()) == 3  # a dry run changes nothing
    now = datetime.now(UTC)
    done = prune(repo, rules, grace=timedelta(hours=24), dry_run=False, now=now)
    assert repo.snapshot_ids() == [headers[2].id]
    assert done.chunks_deleted == 0 and done.chunks_in_grace == 6  # 2 x (2 data + 1 entries stream)
    later = prune(repo, rules, grace=timedelta(hours=24), dry_run=False, now=now + timedelta(hours=25))
    assert later.chunks_deleted == 6 and later.bytes_deleted > 0
    assert check(repo, read_data=1.0).ok
    assert restore_bytes(repo, headers[2]) == mixed_data(2 * MiB, seed=2)


def test_prune_removes_what_a_writer_killed_mid_write_left_behind(repo: Repository, tmp_path: Path) -> None:
    backup_bytes(repo, mixed_data(MiB))
    leftover = tmp_path / "repo" / "chunks" / ".tmp-killed-writer"
    leftover.write_bytes(b"half a chunk")
    now = datetime.now(UTC)
    assert prune(repo, {}, grace=timedelta(hours=24), dry_run=False, now=now).incomplete_removed == 0
    assert leftover.exists()  # it may be a write in progress
    report = prune(repo, {}, grace=timedelta(hours=24), dry_run=False, now=now + timedelta(hours=25))
    assert report.incomplete_removed == 1 and not leftover.exists()
    assert check(repo, read_data=1.0).ok


def test_prune_keeps_sources_without_retention_and_refuses_to_lose_data(repo: Repository) -> None:
    backup_bytes(repo, b"a", source="unmanaged")
    report = prune(repo, {}, grace=timedelta(0), dry_run=False)
    assert report.forgotten == [] and len(report.kept) == 1
    with pytest.raises(PruneRefused, match="history has snapshots of models"):
        prune(repo, {}, grace=timedelta(0), dry_run=False, expected_sources=frozenset({"models"}))
    with repo.lock("shared", "backup"), pytest.raises(RepositoryLocked):
        prune(repo, {}, grace=timedelta(0), dry_run=False)


def test_suspicious_snapshot_never_pushes_out_the_good_one(repo: Repository) -> None:
    good, _ = backup_bytes(repo, b"good data")
    time.sleep(1.1)
    bad, _ = backup_bytes(repo, b"encrypted by ransomware", status="suspicious")
    report = prune(repo, {"src": Retention(keep_last=1)}, grace=timedelta(0), dry_run=False)
    assert set(report.kept) == {good.id, bad.id} and report.forgotten == []
    assert repo.find_snapshot("src").id == good.id


# ---- transient and permanent store faults -------------------------------------------------------


def test_a_store_failing_30_percent_of_calls_is_survived(tmp_path: Path) -> None:
    from backup.repository.faulty import OPERATIONS, FaultyStore
    from backup.repository.retry import RetryingStore, RetryPolicy

    faulty = FaultyStore(LocalStore(tmp_path / "repo"), fail_rate=0.3, seed=3, operations=OPERATIONS)
    store = RetryingStore(faulty, RetryPolicy(attempts=12, base_delay=0.001, max_delay=0.01))
    data = mixed_data(6 * MiB)
    with Repository.init(store) as repository:
        header, _ = backup_bytes(repository, data)
        assert restore_bytes(repository, repository.read_header(header.id)) == data
        assert check(repository, read_data=1.0).ok
    assert faulty.injected["transient"] >= 5  # the faults really happened


def test_a_permanent_store_error_is_reported_once_without_retries(tmp_path: Path) -> None:
    from backup.repository.faulty import FaultyStore

    counting = FaultyStore(LocalStore(tmp_path / "repo"))
    with Repository.init(counting) as repository:
        (tmp_path / "repo" / "chunks").write_text("a file where the chunks directory must be")
        before = counting.calls["put"]  # config.json
        with pytest.raises(StoreError, match="cannot write") as caught:
            backup_bytes(repository, os.urandom(4 * MiB))
        assert "chunks" in str(caught.value)
    # 4 chunks and two lock files (the backup's; the one under which its failure removes what it
    # stored): each put tried once; retrying a permanent error would make 4 x 6
    assert counting.calls["put"] - before <= 6
    assert not list(LocalStore(tmp_path / "repo").list("snapshots/"))


class FirstChunkFillsTheDisk(LocalStore):
    """The first chunk put fails at once (disk full); the others are still being written then."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.chunk_puts = 0

    def put(self, key: str, stream: BinaryIO) -> None:
        if key.startswith("chunks/"):
            self.chunk_puts += 1
            if self.chunk_puts == 1:
                raise StoreError(f"cannot write {key}: [Errno 28] No space left on device")
            time.sleep(0.3)  # still in flight when the first put's error reaches the writer
        super().put(key, stream)


def test_a_failed_write_waits_for_its_chunks_in_flight_before_discarding_them(tmp_path: Path) -> None:
    store = FirstChunkFillsTheDisk(tmp_path / "repo")
    with Repository.init(store, chunk_size=MiB) as repository:
        with pytest.raises(StoreError, match="No space left"):
            backup_bytes(repository, os.urandom(8 * MiB))
    # closing the repository waits for every put: one still running after the discard would be here now
    assert store.chunk_puts > 1  # other chunks were in flight when the first failed
    assert list(store.list("chunks/")) == []
