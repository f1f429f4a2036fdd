"""etcd snapshot files: the sha256 trailer and ``snapshot status`` output."""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from pathlib import Path

import pytest

from backup.sources.etcd.etcdctl import Etcdctl
from backup.sources.etcd.snapshot_file import (
    TRAILER_SIZE,
    CorruptSnapshotError,
    SnapshotDigest,
    SnapshotStatus,
    file_crc32,
    verify_trailer,
)


def snapshot_file(path: Path, db: bytes) -> Path:
    path.write_bytes(db + hashlib.sha256(db).digest())
    return path


def test_a_whole_snapshot_passes_the_trailer_check(tmp_path: Path) -> None:
    db = os.urandom(3 * 1024 * 1024 + 17)  # more than one read block's worth is not needed; odd sizes are
    path = snapshot_file(tmp_path / "s.db", db)
    assert verify_trailer(path) == hashlib.sha256(db).hexdigest()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-100], id="truncated"),
        pytest.param(lambda data: data[:1000] + bytes([data[1000] ^ 1]) + data[1001:], id="one-bit-flipped"),
        pytest.param(lambda data: data[:-TRAILER_SIZE], id="trailer-missing"),
    ],
)
def test_a_damaged_snapshot_fails_the_trailer_check(tmp_path: Path, damage) -> None:
    path = snapshot_file(tmp_path / "s.db", os.urandom(64 * 1024))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptSnapshotError, match="trailer does not match"):
        verify_trailer(path)


def test_a_tiny_file_is_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"x" * TRAILER_SIZE)
    with pytest.raises(CorruptSnapshotError, match="too short"):
        verify_trailer(path)


def status_output(**overrides: object) -> bytes:
    doc = {"hash": 170373510, "revision": 62, "totalKey": 65, "totalSize": 40960} | overrides
    return json.dumps(doc).encode() + b"\n"


def test_snapshot_status_is_parsed_and_matches_the_file() -> None:
    status = SnapshotStatus.parse(status_output(), file_size=40960 + TRAILER_SIZE)
    assert status == SnapshotStatus(hash=170373510, revision=62, total_keys=65, total_size=40960)


@pytest.mark.parametrize(
    ("output", "size", "message"),
    [
        (status_output(totalSize=40960), 40960, "expected db \\+ 32-byte trailer"),
        (status_output(revision=-1), 40960 + TRAILER_SIZE, "impossible figures"),
        (b"Error: snapshot file has wrong format", 40992, "no usable answer"),
        (b'{"hash": 1}', 40992, "no usable answer"),
    ],
)
def test_a_status_that_does_not_fit_the_file_is_refused(output: bytes, size: int, message: str) -> None:
    with pytest.raises(CorruptSnapshotError, match=message):
        SnapshotStatus.parse(output, file_size=size)


def pieces(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random places, into pieces from nothing to past a trailer's size and beyond."""
    rng = random.Random(seed)
    cuts, at = [], 0
    while at < len(data):
        size = rng.choice([0, 1, 5, TRAILER_SIZE - 1, TRAILER_SIZE, TRAILER_SIZE + 1, 100, 4096, 70_000])
        cuts.append(data[at : at + size])
        at += size
    return cuts


@pytest.mark.parametrize("seed", range(20))
def test_the_stream_digest_checks_the_trailer_however_the_bytes_come(seed: int) -> None:
    """The repository hands a stream's bytes to its digest in blocks of any size: the sha256 is the
    stream's, and etcd's trailer is checked on them, or a flipped byte of the db or the trailer, or a
    stream cut short, is named."""
    db = random.Random(seed).randbytes(random.Random(seed).randrange(0, 200_000))
    data = db + hashlib.sha256(db).digest()
    digest = SnapshotDigest()
    for piece in pieces(data, seed):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    if not db:
        with pytest.raises(CorruptSnapshotError, match="too short"):
            digest.trailer("the stream")
        return
    assert digest.trailer("the stream") == hashlib.sha256(db).hexdigest()
    for at in (0, len(db) // 2, len(db) - 1, len(data) - 1):
        damaged = SnapshotDigest()
        for piece in pieces(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :], seed):
            damaged.update(piece)
        with pytest.raises(CorruptSnapshotError, match="the stream: its sha256 trailer does not match"):
            damaged.trailer("the stream")
    cut = SnapshotDigest()
    for piece in pieces(data[: len(data) - 1000], seed):
        cut.update(piece)
    with pytest.raises(CorruptSnapshotError):
        cut.trailer("the stream")


def test_a_files_size_and_crc32_are_its_bytes(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 5)  # more than two read blocks
    path = tmp_path / "s.db"
    path.write_bytes(data)
    assert file_crc32(path) == (len(data), zlib.crc32(data))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_crc32(path) != (len(data), zlib.crc32(data))


def test_a_file_with_a_right_trailer_that_etcd_cannot_read_fails_snapshot_status(tmp_path: Path) -> None:
    """Bytes whose sha256 trailer matches, but no bbolt database: etcd's own ``snapshot status``
    (the real etcdctl) refuses it, and the check says etcd cannot read it."""
    path = snapshot_file(tmp_path / "s.db", os.urandom(64 * 1024))
    verify_trailer(path)
    with pytest.raises(CorruptSnapshotError) as refused:
        Etcdctl().snapshot_status(path)
    assert str(refused.value).startswith(f"etcd cannot read {path} as a snapshot: etcdctl exited with code 1")
    assert "invalid database" in str(refused.value)
