"""etcdctl: versions, its environment, and reading a snapshot while ``snapshot save`` writes it."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.execute import CommandError
from backup.sources.etcd.etcdctl import Etcdctl, _SaveWatch, etcdctl_version
from policies.model import EtcdTls


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


class RenamedWhileLooking(type(Path())):  # type: ignore[misc]
    """A download file that etcdctl renames into place between a look and a stat."""

    def exists(self, *, follow_symlinks: bool = True) -> bool:
        return True

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise FileNotFoundError(2, "No such file or directory", str(self))


def test_the_save_watch_takes_a_download_renamed_into_place_while_it_looks(tmp_path: Path) -> None:
    """etcdctl renames snapshot.db.part when the save ends; a poll at that moment is no error (it once
    escaped `backup run` as a bare FileNotFoundError)."""
    watch = _SaveWatch("http://127.0.0.1:1", RenamedWhileLooking(tmp_path / "snapshot.db.part"), timeout=60.0)
    watch._next_probe = float("inf")  # no liveness probe: only the download's progress is looked at
    assert watch.poll() is None
