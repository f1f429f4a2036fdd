"""Packs (repository format 3): small chunks share store objects, and each one is still its own
deduplicated, verified chunk."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

import pytest

from backup.repository.faulty import flip_one_byte
from backup.repository.maintenance import check, prune
from backup.repository.manifest import ChunkRef, Entry, SnapshotHeader
from backup.repository.packs import PackFailed, PackLayout
from backup.repository.repository import Repository, SnapshotNotFound
from backup.repository.store import LocalStore
from policies.errors import IntegrityError, StoreError

SMALL = PackLayout(below=64 * 1024, target=256 * 1024)  # a pack fills after about fifty small objects


@pytest.fixture(params=["plain", "encrypted"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    key = os.urandom(32) if request.param == "encrypted" else None
    repository = Repository.init(LocalStore(tmp_path / "repo"), key=key)
    repository.config = dataclasses.replace(repository.config, packs=SMALL)
    yield repository
    repository.close()


def small_objects(count: int, seed: int = 0) -> dict[str, bytes]:
    """``count`` objects of 1-10 KiB, half text, half random."""
    objects = {}
    for index in range(count):
        size = 1024 + (index * 7919 + seed) % (9 * 1024)
        body = os.urandom(size) if index % 2 else (b"model config %d\n" % index * size)[:size]
        objects[f"object-{index:05d}"] = body
    return objects


def back_up(repo: Repository, objects: dict[str, bytes], *, source: str = "models") -> SnapshotHeader:
    with repo.begin_snapshot(source, "test") as writer:
        for name, body in objects.items():
            stored = writer.write_stream(io.BytesIO(body))
            writer.add(Entry(name, stored.size, stored.sha256, stored.chunks, {}))
        return writer.commit()


def restored(repo: Repository, header: SnapshotHeader) -> dict[str, bytes]:
    found = {}
    for entry in repo.entries(header):
        out = io.BytesIO()
        repo.restore_entry(entry, out, snapshot=header.id)
        found[entry.name] = out.getvalue()
    return found


def objects_in(repo: Repository, folder: str) -> list[Path]:
    root: Path = repo.store.inner.root  # type: ignore[attr-defined]
    return [path for path in (root / folder).rglob("*") if path.is_file()]


def test_small_objects_share_a_few_packs_and_restore_whole(repo: Repository) -> None:
    objects = small_objects(300)
    header = back_up(repo, objects)
    packs = objects_in(repo, "packs")
    total = sum(len(body) for body in objects.values())
    assert all(ref.pack for entry in repo.entries(header) for ref in entry.chunks)
    assert len(objects_in(repo, "chunks")) <= 1  # at most the entries stream (300 lines, above ``below``)
    assert 1 < len(packs) <= total // SMALL.target + 2  # not one object per chunk: a few full packs
    assert all(path.stat().st_size < SMALL.target + SMALL.below * 2 for path in packs)
    assert restored(repo, header) == objects
    report = check(repo, read_data=1.0)
    assert report.ok and report.packs_stored == len(packs) and report.chunks_read == report.chunks_stored


def test_large_chunks_stay_objects_of_their_own(repo: Repository) -> None:
    big = os.urandom(3 * 1024 * 1024 + 100)
    header = back_up(repo, {"model.bin": big, "config.json": b"{}"})
    [entry, _] = sorted(repo.entries(header), key=lambda entry: -entry.size)
    assert [bool(ref.pack) for ref in entry.chunks] == [False, False, False, True]  # the 100-byte tail is packed
    assert len(objects_in(repo, "chunks")) == 3
    assert restored(repo, header)["model.bin"] == big


def test_the_same_small_bytes_twice_in_one_write_are_stored_once(repo: Repository) -> None:
    header = back_up(repo, {"a": b"same bytes" * 100, "b": b"same bytes" * 100})
    [first, second] = list(repo.entries(header))
    assert first.chunks == second.chunks


def packed_chunk_file(repo: Repository, ref: ChunkRef) -> Path:
    return repo.store.inner.root / ref.key  # type: ignore[no-any-return, attr-defined]


def flip_inside(repo: Repository, ref: ChunkRef) -> None:
    """Flip one byte within ``ref``'s range of its pack, on disk."""
    path = packed_chunk_file(repo, ref)
    data = path.read_bytes()
    start, end = ref.offset, ref.offset + ref.length
    path.write_bytes(data[:start] + flip_one_byte(data[start:end]) + data[end:])


def test_a_damaged_packed_chunk_is_named_and_its_pack_mates_still_restore(repo: Repository) -> None:
    objects = small_objects(40)
    header = back_up(repo, objects)
    entries = {entry.name: entry for entry in repo.entries(header)}
    victim = entries["object-00007"].chunks[0]
    mates = [name for name, entry in entries.items() if entry.chunks[0].pack == victim.pack and name != "object-00007"]
    assert mates, "the victim shares its pack"
    flip_inside(repo, victim)

    with pytest.raises(IntegrityError, match=f"chunk {victim.id} .*corrupt"):
        repo.restore_entry(entries["object-00007"], io.BytesIO(), snapshot=header.id)
    for name in mates:
        out = io.BytesIO()
        repo.restore_entry(entries[name], out, snapshot=header.id)
        assert out.getvalue() == objects[name]
    report = check(repo, read_data=1.0)
    assert [(problem.kind, problem.chunk) for problem in report.problems] == [("corrupt-chunk", victim.id)]


def test_a_truncated_pack_fails_the_chunks_past_its_end(repo: Repository) -> None:
    header = back_up(repo, small_objects(10))
    last = max((entry.chunks[0] for entry in repo.entries(header)), key=lambda ref: ref.offset)
    path = packed_chunk_file(repo, last)
    path.write_bytes(path.read_bytes()[: last.offset + 3])
    with pytest.raises(IntegrityError, match=f"chunk {last.id} is corrupt: its pack ends before it"):
        repo.read_chunk(last, snapshot=header.id)


def test_a_missing_pack_is_one_problem_naming_it_and_its_chunks(repo: Repository) -> None:
    header = back_up(repo, small_objects(10))
    ref = next(iter(repo.entries(header))).chunks[0]
    packed_chunk_file(repo, ref).unlink()
    report = check(repo)
    assert [problem.kind for problem in report.problems] == ["missing-chunk"]
    assert f"pack {ref.pack} is missing" in report.problems[0].message and header.id in report.problems[0].message


class PacksFailOnce(LocalStore):
    """The first pack put fails like a full disk; everything else is stored."""

    failed = False

    def put(self, key: str, stream: BinaryIO) -> None:
        if key.startswith("packs/") and not PacksFailOnce.failed:
            PacksFailOnce.failed = True
            raise StoreError(f"cannot write {key}: No space left on device")
        super().put(key, stream)


def test_a_pack_that_could_not_be_stored_fails_the_write_even_when_its_caller_went_on(tmp_path: Path) -> None:
    """A source may skip one object that failed and go on; the chunks already packed with it are lost
    with its pack, so the snapshot must not commit (it would name chunks that are nowhere)."""
    PacksFailOnce.failed = False
    repository = Repository.init(PacksFailOnce(tmp_path / "repo"))
    repository.config = dataclasses.replace(repository.config, packs=SMALL)
    with pytest.raises(PackFailed, match="could not be stored"), repository.begin_snapshot("models", "test") as writer:
        for name, body in small_objects(100).items():
            try:
                stored = writer.write_stream(io.BytesIO(body))
            except StoreError:
                continue  # skipped, as a lenient source would
            writer.add(Entry(name, stored.size, stored.sha256, stored.chunks, {}))
        writer.commit()
    assert PacksFailOnce.failed
    assert repository.list_snapshots() == []
    with pytest.raises(SnapshotNotFound):
        repository.find_snapshot("models")
    repository.close()


def test_prune_keeps_a_pack_while_any_snapshot_names_it(repo: Repository) -> None:
    objects = small_objects(5)
    first = back_up(repo, objects)
    with repo.begin_snapshot("models", "test") as writer:  # an incremental reusing one entry whole
        reused = next(iter(repo.entries(first)))
        writer.add(reused)
        second = writer.commit()
    packs_before = set(objects_in(repo, "packs"))

    repo.forget(first)
    kept = prune(repo, {"models": None}, grace=timedelta(0), dry_run=False)
    assert packed_chunk_file(repo, reused.chunks[0]).exists()  # the second snapshot still names it
    out = io.BytesIO()
    repo.restore_entry(next(iter(repo.entries(second))), out, snapshot=second.id)
    assert out.getvalue() == objects[reused.name] and check(repo, read_data=1.0).ok
    assert kept.chunks_deleted == len(packs_before) - len(set(objects_in(repo, "packs")))

    repo.forget(second)
    prune(repo, {"models": None}, grace=timedelta(0), dry_run=False)
    assert objects_in(repo, "packs") == []


def test_copy_into_a_repository_with_other_keys_repacks_and_verifies(repo: Repository, tmp_path: Path) -> None:
    from backup.repository.copy import copy_snapshots

    objects = small_objects(50)
    header = back_up(repo, objects)
    target = Repository.init(LocalStore(tmp_path / "target"), key=os.urandom(32))
    report = copy_snapshots(repo, target, [header])
    assert [snapshot.status for snapshot in report.snapshots] == ["copied"]
    [copied] = target.list_snapshots()
    assert restored(target, copied) == objects and check(target, read_data=1.0).ok
    assert objects_in(target, "packs") and not objects_in(target, "chunks")
    target.close()
