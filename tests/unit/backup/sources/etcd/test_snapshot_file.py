"""etcd snapshot files: the sha256 trailer, ``snapshot status`` output, versions and restore options."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.execute import CommandError
from backup.sources.base import RestoreOptions
from backup.sources.etcd.source import (
    TRAILER_SIZE,
    CorruptSnapshotError,
    Etcdctl,
    EtcdDataDirTarget,
    EtcdFileTarget,
    EtcdSource,
    SnapshotStatus,
    check_membership,
    etcdctl_version,
    parse_initial_cluster,
    verify_trailer,
)
from policies.errors import RestoreError
from policies.model import EtcdSettings, EtcdTls


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


def test_etcdctl_versions_are_read() -> None:
    assert etcdctl_version("etcdctl version: 3.4.23\nAPI version: 3.4\n") == (3, 4)
    assert etcdctl_version("etcdctl version: 3.5.12\nAPI version: 3.5\n") == (3, 5)
    with pytest.raises(ValueError, match="no 'etcdctl version"):
        etcdctl_version("command not found")


def test_etcdctl_gets_secrets_through_its_environment_and_ignores_the_operators(monkeypatch) -> None:
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://prod:2379")
    etcdctl = Etcdctl(tls=EtcdTls(ca=Path("/ca.crt"), cert=Path("/c.crt"), key=Path("/c.key")), user="root", password="pw")
    env = etcdctl.env("http://127.0.0.1:1")
    assert env["ETCDCTL_ENDPOINTS"] == "http://127.0.0.1:1"
    assert (env["ETCDCTL_CACERT"], env["ETCDCTL_CERT"], env["ETCDCTL_KEY"]) == ("/ca.crt", "/c.crt", "/c.key")
    assert (env["ETCDCTL_USER"], env["ETCDCTL_PASSWORD"]) == ("root", "pw")
    assert Etcdctl().env()["ETCDCTL_ENDPOINTS"] == ""  # the operator's endpoint is blanked, never used


def test_initial_cluster_is_parsed() -> None:
    assert parse_initial_cluster("n1=https://10.0.0.11:2380,n2=https://10.0.0.12:2380,n1=https://[::1]:2380") == {
        "n1": ["https://10.0.0.11:2380", "https://[::1]:2380"],
        "n2": ["https://10.0.0.12:2380"],
    }
    for bad in ("n1", "n1=10.0.0.11:2380", ",", "=http://a:1"):
        with pytest.raises(ValueError):
            parse_initial_cluster(bad)


@pytest.mark.parametrize(
    ("name", "cluster", "urls", "message"),
    [
        ("n3", "n1=http://a:2380,n2=http://b:2380", "http://c:2380", "--name n3 is not a member"),
        ("n1", "n1=http://a:2380,n2=http://b:2380", "http://b:2380", "must be member n1's URLs"),
        ("n1", "n1:http://a:2380", "http://a:2380", "--initial-cluster 'n1:http://a:2380'"),
    ],
)
def test_inconsistent_membership_is_refused(name: str, cluster: str, urls: str, message: str) -> None:
    with pytest.raises(RestoreError, match=message):
        check_membership(name, cluster, urls)


SOURCE = EtcdSource("k8s-etcd", EtcdSettings(kind="etcd", endpoints=["http://127.0.0.1:2379"]))
MEMBER = {
    "name": "n1",
    "initial_cluster": "n1=http://10.0.0.11:2380",
    "initial_advertise_peer_urls": "http://10.0.0.11:2380",
}


def test_targets_are_parsed(tmp_path: Path) -> None:
    assert SOURCE.parse_target(RestoreOptions(to_file=str(tmp_path / "s.db"))) == EtcdFileTarget(tmp_path / "s.db")
    target = SOURCE.parse_target(RestoreOptions(to_data_dir=str(tmp_path / "etcd"), **MEMBER))
    assert isinstance(target, EtcdDataDirTarget)
    assert (target.data_dir, target.name, target.members) == (tmp_path / "etcd", "n1", {"n1": ["http://10.0.0.11:2380"]})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RestoreOptions(to_bucket="b"), "--to-bucket does not apply to etcd source 'k8s-etcd'; use --to-file PATH"),
        (RestoreOptions(to_host="ch", to_database="d"), "--to-host, --to-database do not apply"),
        (RestoreOptions(), "say where to restore: use --to-file PATH.*--to-data-dir DIR"),
        (RestoreOptions(to_file="a", to_data_dir="b"), "give only one of --to-file and --to-data-dir"),
        (RestoreOptions(to_file="a", name="n1"), "--name apply only with --to-data-dir"),
        (RestoreOptions(to_data_dir="d", name="n1"), "also needs --initial-cluster, --initial-advertise-peer-urls"),
    ],
)
def test_wrong_target_options_say_what_to_use(options: RestoreOptions, message: str) -> None:
    with pytest.raises(RestoreError, match=message):
        SOURCE.parse_target(options)


# ---- reading a snapshot while etcdctl writes it ------------------------------------------------------


def fake_etcdctl(directory: Path, *, pieces: int, delay: float, exit_code: int = 0) -> Path:
    """A stand-in for ``etcdctl snapshot save PATH`` that writes PATH.part the way etcdctl does:
    created, appended in pieces, then renamed to PATH (on success) before it exits."""
    script = directory / "etcdctl"
    script.write_text(
        f"""#!{sys.executable}
import os, sys, time
path = sys.argv[3]
with open(path + ".part", "wb") as out:
    for number in range({pieces}):
        out.write(bytes([number]) * 300_000)
        out.flush()
        time.sleep({delay})
if {exit_code}:
    print("rpc error: the member went away", file=sys.stderr)
    sys.exit({exit_code})
os.rename(path + ".part", path)
"""
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def member() -> Iterator[str]:
    """An endpoint that accepts connections (the kernel's backlog answers): the save's liveness
    probe finds the member up, whatever the fake etcdctl does."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"


def expected_bytes(pieces: int) -> bytes:
    return b"".join(bytes([number]) * 300_000 for number in range(pieces))


@pytest.mark.parametrize(("pieces", "delay"), [(4, 0.15), (3, 0.0)], ids=["while-written", "done-before-first-look"])
def test_the_download_gives_every_byte_across_the_rename(tmp_path: Path, member: str, pieces: int, delay: float) -> None:
    etcdctl = Etcdctl(binary=str(fake_etcdctl(tmp_path, pieces=pieces, delay=delay)))
    path = tmp_path / "snapshot.db"
    with etcdctl.snapshot_save(member, path) as download:
        if not delay:
            time.sleep(0.5)  # etcdctl has written, renamed and exited before the first read
        read = b""
        while block := download.read(1 << 20):
            read += block
    assert read == expected_bytes(pieces) and path.read_bytes() == read
    assert not path.with_name("snapshot.db.part").exists()


def test_a_save_that_fails_half_way_raises_with_etcdctls_words(tmp_path: Path, member: str) -> None:
    etcdctl = Etcdctl(binary=str(fake_etcdctl(tmp_path, pieces=2, delay=0.05, exit_code=2)))
    with pytest.raises(CommandError, match="the member went away"):
        with etcdctl.snapshot_save(member, tmp_path / "snapshot.db") as download:
            while download.read(1 << 20):
                pass


def test_a_stale_part_of_a_stopped_attempt_is_never_read(tmp_path: Path, member: str) -> None:
    (tmp_path / "snapshot.db.part").write_bytes(b"STALE" * 100_000)
    etcdctl = Etcdctl(binary=str(fake_etcdctl(tmp_path, pieces=2, delay=0.1)))
    with etcdctl.snapshot_save(member, tmp_path / "snapshot.db") as download:
        read = b"".join(iter(lambda: download.read(1 << 20), b""))
    assert read == expected_bytes(2)
