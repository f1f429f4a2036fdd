"""A damaged repository as a hostile operator leaves it (issue 21): edited manifests are refused by name,
one unreadable manifest never stops a source, and a failed backup leaves no orphan chunks behind.

The S3 source on moto's server, a local (unencrypted) repository, the real CLI in process."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import S3Endpoint
from helpers import init_repository, missing_requirement, rewrite_manifest
from policy_builder import PolicyBuilder

from backup.repository.maintenance import check
from backup.repository.manifest import Entry, manifest_key
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from lifeboat.cli import cli
from policies.errors import IntegrityError

pytestmark = pytest.mark.integration
DATA = Path(__file__).parent.parent / "data"


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


@dataclass(frozen=True)
class Lifeboat:
    """`lifeboat --config <policy>` in process, for a policy with one S3 source, ``models``."""

    config: Path
    repository: Path
    bucket: str

    def __call__(self, *args: str) -> Ran:
        aws = {name: None for name in os.environ if name.startswith("AWS_")}
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], env=aws, catch_exceptions=False)
        return Ran(result.exit_code, result.stdout, result.stderr)

    def backup(self) -> dict[str, Any]:
        done = self("backup", "run", "--source", "models", "--json")
        assert done.code == 0, done.stdout + done.stderr[-3000:]
        [snapshot] = done.json()["snapshots"]
        return snapshot

    def manifest(self, snapshot_id: str) -> Path:
        return self.repository / manifest_key("models", snapshot_id)


def _lifeboat(s3: S3Endpoint, directory: Path, repository: Path, objects: int) -> Lifeboat:
    bucket = f"damage-{uuid.uuid4().hex[:10]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for index in range(objects):
        client.put_object(Bucket=bucket, Key=f"obj-{index:04d}", Body=os.urandom(100 + index))
    policy = PolicyBuilder(repository, state=directory / "state.db").source(
        "models",
        "s3",
        endpoint_url=s3.endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        buckets=[bucket],
        retention={"keep_last": 10},
    )
    return Lifeboat(init_repository(policy.write(directory / "lifeboat.yaml")), repository, bucket)


@pytest.fixture
def lifeboat(s3_server: S3Endpoint, tmp_path: Path) -> Lifeboat:
    return _lifeboat(s3_server, tmp_path, tmp_path / "repo", 12)


def _add_objects(s3: S3Endpoint, bucket: str, count: int) -> None:
    for index in range(count):
        s3.client().put_object(Bucket=bucket, Key=f"new-{index:04d}", Body=os.urandom(50 + index))


# ---- edited manifests ---------------------------------------------------------------------------


def test_every_single_byte_flip_in_an_unencrypted_manifest_is_refused_naming_it(lifeboat: Lifeboat) -> None:
    snapshot_id = lifeboat.backup()["id"]
    path = lifeboat.manifest(snapshot_id)
    original = path.read_bytes()
    silent = []
    with Repository.open(LocalStore(lifeboat.repository)) as repository:
        expected = repository.read_header(snapshot_id)
        for position in range(len(original)):
            for mask in (0x01, 0x80):
                damaged = bytearray(original)
                damaged[position] ^= mask
                path.write_bytes(bytes(damaged))
                try:
                    header = repository.read_header(snapshot_id)
                except IntegrityError as exc:  # anything else (MemoryError...) fails the test
                    assert snapshot_id in str(exc)
                    continue
                if header != expected:
                    silent.append(position)
    path.write_bytes(original)
    assert silent == [], f"{len(silent)} single-bit flips changed the manifest silently (byte offsets {silent[:10]})"


def test_a_flipped_byte_fails_restore_and_check_naming_the_manifest(lifeboat: Lifeboat, tmp_path: Path) -> None:
    snapshot_id = lifeboat.backup()["id"]
    path = lifeboat.manifest(snapshot_id)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x04
    path.write_bytes(bytes(damaged))

    restore = lifeboat("restore", "models", "--snapshot", snapshot_id, "--to-dir", str(tmp_path / "out"), "--json")
    assert restore.code == 1
    assert "manifest" in restore.stderr and snapshot_id in restore.stderr
    checked = lifeboat("check", "--json")
    assert checked.code == 1
    assert [problem["snapshot"] for problem in checked.json()["problems"] if problem["kind"] == "manifest"] == [snapshot_id]


def test_a_manifest_copied_over_another_snapshots_file_is_refused_naming_both(
    lifeboat: Lifeboat, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    older = lifeboat.backup()["id"]
    _add_objects(s3_server, lifeboat.bucket, 3)
    newer = lifeboat.backup()["id"]
    shutil.copyfile(lifeboat.manifest(older), lifeboat.manifest(newer))

    restore = lifeboat("restore", "models", "--snapshot", newer, "--to-dir", str(tmp_path / "out"), "--json")
    assert restore.code == 1, restore.stdout
    assert older in restore.stderr and newer in restore.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    checked = lifeboat("check", "--json")
    assert checked.code == 1
    [problem] = [problem for problem in checked.json()["problems"] if problem["kind"] == "manifest"]
    assert problem["snapshot"] == newer and older in problem["message"]


def test_entries_pointed_at_an_older_snapshots_fail_the_restore(
    lifeboat: Lifeboat, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    older = lifeboat.backup()["id"]
    _add_objects(s3_server, lifeboat.bucket, 4)
    newer = lifeboat.backup()["id"]
    with Repository.open(LocalStore(lifeboat.repository)) as repository:  # a forger using the tool's own encoding
        header = repository.read_header(newer)
        rewrite_manifest(
            repository, dataclasses.replace(header, entries_chunks=repository.read_header(older).entries_chunks)
        )

    restore = lifeboat("restore", "models", "--snapshot", newer, "--to-dir", str(tmp_path / "out"), "--json")
    assert restore.code == 1, restore.stdout
    assert "each verified" not in restore.stdout + restore.stderr
    assert newer in restore.stderr and "entries" in restore.stderr
    checked = lifeboat("check", "--json")
    assert checked.code == 1 and any(problem["snapshot"] == newer for problem in checked.json()["problems"])


# ---- one unreadable manifest --------------------------------------------------------------------


def test_a_truncated_newest_manifest_stops_nothing_else(lifeboat: Lifeboat, tmp_path: Path) -> None:
    good = lifeboat.backup()["id"]
    truncated = lifeboat.backup()["id"]
    path = lifeboat.manifest(truncated)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    restore = lifeboat("restore", "models", "--to-dir", str(tmp_path / "out"), "--json")
    assert restore.code == 0, restore.stdout + restore.stderr[-2000:]
    assert restore.json()["snapshot"] == good
    assert truncated in restore.stderr  # the warning names the manifest it skipped

    status = lifeboat("status", "--json")
    assert status.code == 0
    assert status.json()["repository"]["error"] is None
    assert "repository not listed" not in lifeboat("status").stdout

    listed = lifeboat("snapshots", "list", "--json")
    assert listed.code == 0 and [item["id"] for item in listed.json()["snapshots"]] == [good]

    after = lifeboat.backup()  # its base is the last good snapshot: every object is reused, none read again
    assert after["bytes_read"] == 0, after

    checked = lifeboat("check", "--json")
    assert checked.code == 1
    assert [problem["snapshot"] for problem in checked.json()["problems"]] == [truncated]

    prune = lifeboat("prune", "--json")
    assert prune.code == 0, prune.stdout + prune.stderr[-2000:]
    assert truncated in prune.json()["damaged"] and path.exists()  # never deleted without consent

    forget = lifeboat("prune", "--forget-damaged", "--json")
    assert forget.code == 0
    assert truncated in forget.json()["forgotten"] and not path.exists()
    assert lifeboat("check", "--json").code == 0


# ---- a failed backup on a full disk -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        missing_requirement(f"cannot mount a tmpfs (root needed): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_backup_that_fills_the_disk_leaves_no_orphan_chunks(
    s3_server: S3Endpoint, tmp_path: Path, small_disk: Path
) -> None:
    lifeboat = _lifeboat(s3_server, tmp_path, small_disk / "repo", 0)
    for index in range(8):  # 16 MiB of random bytes: more than the 10 MiB disk
        s3_server.client().put_object(Bucket=lifeboat.bucket, Key=f"big-{index}", Body=os.urandom(2 * 1024 * 1024))

    failed = lifeboat("backup", "run", "--source", "models", "--json")
    assert failed.code == 1
    assert "No space left" in failed.stdout + failed.stderr
    stored = [path for folder in ("chunks", "packs") for path in (small_disk / "repo" / folder).rglob("*")]
    assert [path for path in stored if path.is_file()] == []
    assert not any((small_disk / "repo" / "locks").glob("*"))


# ---- an old repository ---------------------------------------------------------------------------


OLD_REPOSITORIES = [
    "repository-format1",  # before checksummed zstd frames
    "repository-format1-encrypted",
    "repository-format2",  # before packs: every chunk an object of its own
    "repository-format2-encrypted",
]


@pytest.mark.parametrize("name", OLD_REPOSITORIES)
def test_a_repository_of_an_older_format_still_reads(name: str, tmp_path: Path) -> None:
    copy = shutil.copytree(DATA / name, tmp_path / name)
    key_file = DATA / f"{name}.key"
    key = bytes.fromhex(key_file.read_text().strip()) if key_file.exists() else None
    with Repository.open(LocalStore(copy), key=key) as repository:
        [header] = repository.list_snapshots()
        entries = list(repository.entries(header))
        assert len(entries) == header.entry_count
        for entry in entries:
            out = (tmp_path / "out").open("wb")
            with out:
                repository.restore_entry(entry, out, snapshot=header.id)
            assert (tmp_path / "out").read_bytes().startswith(b"written by Lifeboat 0.1.0") or entry.name == "random.bin"
        assert check(repository, read_data=1.0).ok


@pytest.mark.parametrize("name", OLD_REPOSITORIES)
def test_a_repository_of_an_older_format_takes_new_snapshots_in_its_own_format(name: str, tmp_path: Path) -> None:
    """A Lifeboat that reads only the older format keeps reading it after this one backed up into it:
    no packs there, and config.json keeps its format."""
    copy = shutil.copytree(DATA / name, tmp_path / name)
    config = json.loads((copy / "config.json").read_text())
    key_file = DATA / f"{name}.key"
    key = bytes.fromhex(key_file.read_text().strip()) if key_file.exists() else None
    with Repository.open(LocalStore(copy), key=key) as repository:
        with repository.begin_snapshot("models", "s3") as writer:
            stored = writer.write_stream(io.BytesIO(b"a small object written after the upgrade\n"))
            writer.add(Entry("new.txt", stored.size, stored.sha256, stored.chunks, {}))
            header = writer.commit()
        out = io.BytesIO()
        [entry] = list(repository.entries(header))
        repository.restore_entry(entry, out, snapshot=header.id)
        assert out.getvalue() == b"a small object written after the upgrade\n"
        assert check(repository, read_data=1.0).ok
    assert not (copy / "packs").exists() and all(not ref.pack for ref in entry.chunks + header.entries_chunks)
    assert json.loads((copy / "config.json").read_text()) == config
