"""Restores under damage, as a hostile operator finds them: a full target filesystem (a small tmpfs)
is a clear error naming the path, never a traceback; a SIGKILLed directory restore is named by the
next run, which cleans up what it left. The real CLI in a subprocess, real moto S3 and etcd."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import S3Endpoint
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.servers import EtcdProcess

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
UNFINISHED = "an earlier restore into this target did not finish"
MEMBER = [
    "--name",
    "m1",
    "--initial-cluster",
    "m1=http://127.0.0.1:2380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:2380",
]


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class Cli:
    """The real ``lifeboat --config <policy>`` in a subprocess, without the test's AWS_* variables."""

    config: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lifeboat", "--config", str(self.config), *args]

    def env(self) -> dict[str, str]:
        return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}

    def __call__(self, *args: str) -> Ran:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=300, check=False)
        return Ran(done.returncode, done.stdout, done.stderr)


def _no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.output, ran.output[-3000:]


def _json_error(ran: Ran, *fragments: str) -> None:
    """With --json: one document saying what failed."""
    document = json.loads(ran.stdout)
    assert document["ok"] is False
    for fragment in fragments:
        assert fragment in document["error"]["message"]


@contextlib.contextmanager
def full_tmpfs(where: Path, *, free: int) -> Iterator[Path]:
    """A 10 MiB tmpfs mounted at ``where``, filled up to ``free`` bytes of free space; unmounted after."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(where)], check=True)
    try:
        available = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        with (where / "filler").open("wb") as filler:
            filler.write(b"\0" * (available - free))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _litter(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.name.startswith(".lifeboat-")]


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in directory.rglob("*")
        if path.is_file()
    }


# ---- S3 into a directory -----------------------------------------------------------------------------


def _bucket_cli(s3: S3Endpoint, directory: Path, objects: dict[str, bytes]) -> Cli:
    """A bucket holding ``objects``, a policy backing it up to a local repository, one snapshot taken."""
    client = s3.client()
    bucket = f"damage-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    policy.source(
        "models", "s3", endpoint_url=s3.endpoint_url, access_key_id="testing", secret_access_key="testing", buckets=[bucket]
    )
    cli = Cli(init_repository(policy.write(directory / "lifeboat.yaml")))
    done = cli("backup", "run")
    assert done.code == 0, done.stderr[-3000:]
    return cli


def test_a_directory_restore_onto_a_full_disk_names_the_path(s3_server: S3Endpoint, tmp_path: Path) -> None:
    objects = {f"data/part-{number:02d}.bin": os.urandom(64 * 1024) for number in range(12)}
    cli = _bucket_cli(s3_server, tmp_path, objects)
    with full_tmpfs(tmp_path / "disk", free=200 * 1024) as disk:
        target = disk / "restored"
        failed = cli("restore", "models", "--to-dir", str(target))
        assert failed.code == 1, failed.output[-3000:]
        _no_traceback(failed)
        assert f"cannot write {target}/data/part-" in failed.stderr
        assert "No space left on device" in failed.stderr
        assert _litter(target) == [target / ".lifeboat-restore-unfinished"]  # no part file; the mark stays

        as_json = cli("restore", "models", "--to-dir", str(disk / "again"), "--json")
        assert as_json.code == 1
        _no_traceback(as_json)
        _json_error(as_json, f"cannot write {disk}/again/data/part-", "No space left on device")


def test_a_killed_directory_restore_is_named_and_cleaned_up(s3_server: S3Endpoint, tmp_path: Path) -> None:
    objects = {f"weights/shard-{number}.bin": os.urandom(32 * MIB) for number in range(3)}
    objects.update({f"small/{number:03d}": os.urandom(1000 + number) for number in range(50)})
    cli = _bucket_cli(s3_server, tmp_path, objects)
    target = tmp_path / "restored"

    restore = subprocess.Popen(
        cli.argv("restore", "models", "--to-dir", str(target)),
        env=cli.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(path.name.endswith(".part") for path in _litter(target)) and restore.poll() is None:
            assert time.monotonic() < deadline, "the restore never started writing"
            time.sleep(0.005)
        os.kill(restore.pid, signal.SIGKILL)
    finally:
        restore.wait()
    assert restore.returncode == -signal.SIGKILL, "the restore finished before it could be killed"
    parts = [path for path in _litter(target) if path.name.endswith(".part")]
    assert parts, "the kill left no part file: the test proves nothing"

    refused = cli("restore", "models", "--to-dir", str(target))
    assert refused.code == 1
    _no_traceback(refused)
    assert "not empty" in refused.stderr and UNFINISHED in refused.stderr

    done = cli("restore", "models", "--to-dir", str(target), "--yes")
    assert done.code == 0, done.output[-3000:]
    assert UNFINISHED in done.output
    assert _litter(target) == []
    assert _digests(target) == {key: hashlib.sha256(data).hexdigest() for key, data in objects.items()}

    again = cli("restore", "models", "--to-dir", str(target), "--yes")
    assert again.code == 0 and UNFINISHED not in again.output


RESTORE_TRIALS = 20


def test_restores_killed_at_random_moments_never_leave_a_wrong_copy(s3_server: S3Endpoint, tmp_path: Path) -> None:
    """The restore writer of the SIGKILL trials: 20 `restore --to-dir --yes` runs into one target, each
    killed at a random moment of the time a whole run takes here (while starting, listing, writing or
    renaming); then one more run must
    leave exactly the snapshot, no part file and no mark, and the repository must check clean (the
    killed runs' shared locks are stale at once on this host and removed)."""
    objects = {f"weights/shard-{number}.bin": os.urandom(16 * MIB) for number in range(4)}
    objects.update({f"small/{number:03d}": os.urandom(500 + number) for number in range(40)})
    cli = _bucket_cli(s3_server, tmp_path, objects)
    target = tmp_path / "restored"
    rng = random.Random(2026)
    argv = cli.argv("restore", "models", "--to-dir", str(target), "--yes")
    subprocess.run(argv, env=cli.env(), check=True, capture_output=True)
    started = time.monotonic()  # a whole run like the trials' (over a full target): how long one takes here
    subprocess.run(argv, env=cli.env(), check=True, capture_output=True)
    whole = time.monotonic() - started
    killed = 0
    for _ in range(RESTORE_TRIALS):
        restore = subprocess.Popen(argv, env=cli.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(rng.uniform(0.02, 1.1) * whole)  # kills land while starting, listing, writing and renaming
            if restore.poll() is None:
                os.kill(restore.pid, signal.SIGKILL)
                killed += 1
        finally:
            restore.wait()
    assert killed >= 5, f"only {killed} of {RESTORE_TRIALS} kills landed before the restore ended: the trial proves little"

    done = cli("restore", "models", "--to-dir", str(target), "--yes")
    assert done.code == 0, done.output[-3000:]
    assert _litter(target) == []
    assert _digests(target) == {key: hashlib.sha256(data).hexdigest() for key, data in objects.items()}
    checked = cli("check", "--json")
    assert checked.code == 0 and json.loads(checked.stdout)["ok"] is True, checked.output[-3000:]


# ---- etcd into a file and a member data dir ------------------------------------------------------------


@pytest.fixture
def etcd_cli(etcd_server: EtcdProcess, tmp_path: Path) -> Cli:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=[etcd_server.endpoint])
    cli = Cli(init_repository(policy.write(tmp_path / "lifeboat.yaml")))
    done = cli("backup", "run")
    assert done.code == 0, done.stderr[-3000:]
    return cli


def test_an_etcd_file_restore_onto_a_full_disk_names_the_path(etcd_cli: Cli, tmp_path: Path) -> None:
    with full_tmpfs(tmp_path / "disk", free=4096) as disk:
        target = disk / "etcd.db"
        failed = etcd_cli("restore", "k8s-etcd", "--to-file", str(target))
        assert failed.code == 1, failed.output[-3000:]
        _no_traceback(failed)
        assert f"cannot write {target}: No space left on device" in failed.stderr
        assert sorted(path.name for path in disk.iterdir()) == ["filler"]  # no part file, no mark, no db

        as_json = etcd_cli("restore", "k8s-etcd", "--to-file", str(target), "--json")
        assert as_json.code == 1
        _no_traceback(as_json)
        _json_error(as_json, f"cannot write {target}", "No space left on device")


def test_an_etcd_data_dir_restore_onto_a_full_disk_names_the_path(etcd_cli: Cli, tmp_path: Path) -> None:
    with full_tmpfs(tmp_path / "disk", free=4096) as disk:
        target = disk / "member"
        failed = etcd_cli("restore", "k8s-etcd", "--to-data-dir", str(target), *MEMBER)
        assert failed.code == 1, failed.output[-3000:]
        _no_traceback(failed)
        assert str(target) in failed.stderr and "no space left on device" in failed.stderr.lower()
        assert sorted(path.name for path in disk.iterdir()) == ["filler"]


def test_a_killed_etcd_file_restore_is_named_and_cleaned_up(etcd_cli: Cli, tmp_path: Path) -> None:
    """What a SIGKILL between the first and the last byte leaves: the mark and a part file beside the
    target (planted as such: the snapshot of the session etcd is written too fast to kill mid-way)."""
    target = tmp_path / "out" / "etcd.db"
    target.parent.mkdir()
    target.write_bytes(b"the previous db")
    litter = target.with_name(".etcd.db.lifeboat-999999.part")
    litter.write_bytes(b"half")
    mark = target.with_name(".etcd.db.lifeboat-restore-unfinished")
    mark.write_text(json.dumps({"snapshot": "k8s-etcd-x", "started": "2026-01-01T00:00:00+00:00", "pid": 999999}))

    refused = etcd_cli("restore", "k8s-etcd", "--to-file", str(target))
    assert refused.code == 1 and UNFINISHED in refused.stderr and "--yes" in refused.stderr

    done = etcd_cli("restore", "k8s-etcd", "--to-file", str(target), "--yes")
    assert done.code == 0, done.output[-3000:]
    assert UNFINISHED in done.output
    assert sorted(path.name for path in target.parent.iterdir()) == ["etcd.db"]
