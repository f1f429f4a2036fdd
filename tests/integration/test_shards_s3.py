"""Sharded S3 backups on moto's S3 server, as a user runs them: `lifeboat backup run --shard I/N
--part-of RUN` once per shard, then `lifeboat backup merge`. The result is ONE normal snapshot: listed
once, restored byte for byte, fingerprint-equal to an unsharded backup, incremental next time; a
failed shard leaves no snapshot and no part behind."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import S3Endpoint
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.execute import free_port
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.sources.s3.keypath import key_to_path
from lifeboat.cli import cli
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus

pytestmark = pytest.mark.integration

SOURCE = "models"


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Lifeboat:
    """`lifeboat --config <policy>` in-process, without the AWS_* variables of the environment."""

    config: Path
    repository: Path

    def __call__(self, *args: str) -> Ran:
        aws: dict[str, str | None] = {name: None for name in os.environ if name.startswith("AWS_")}
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], env=aws, catch_exceptions=False)
        return Ran(result.exit_code, result.stdout, result.stderr)

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        done = self(*args, "--json")
        assert done.code == code, f"exit {done.code}, stderr:\n{done.stderr[-3000:]}"
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def part(self, shard: str, run: str, *, code: int = 0) -> dict[str, Any]:
        return self.json("backup", "run", "--source", SOURCE, "--shard", shard, "--part-of", run, code=code)

    def sharded(self, run: str, count: int) -> dict[str, Any]:
        """Every shard's part, then the merge: the merged snapshot as `backup merge --json` reports it."""
        for index in range(1, count + 1):
            [part] = self.part(f"{index}/{count}", run)["snapshots"]
            assert (part["shard"], part["part_of"]) == (f"{index}/{count}", run)
        report = self.json("backup", "merge", "--source", SOURCE, "--part-of", run)
        assert report["errors"] == []
        [snapshot] = report["snapshots"]
        return snapshot

    def snapshots(self) -> list[dict[str, Any]]:
        return list(self.json("snapshots", "list", "--source", SOURCE)["snapshots"])

    def show(self, snapshot_id: str) -> dict[str, Any]:
        return self.json("snapshots", "show", snapshot_id)

    def parts(self) -> list[str]:
        return [stored.key for stored in Repository.open(LocalStore(self.repository)).list_parts()]


def write_policy(directory: Path, endpoint: str, buckets: list[str]) -> Lifeboat:
    directory.mkdir(parents=True, exist_ok=True)
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    policy.source(SOURCE, "s3", endpoint_url=endpoint, **keys, buckets=buckets, parallel=4, retention={"keep_last": 10})
    policy.executor("kubernetes", kubernetes={"shards": {SOURCE: 3}})
    return Lifeboat(init_repository(policy.write(directory / "lifeboat.yaml")), directory / "repo")


@pytest.fixture
def buckets(s3_server: S3Endpoint) -> dict[str, dict[str, bytes]]:
    """Four buckets of objects (one empty); what each holds, by key."""
    client = s3_server.client()
    content: dict[str, dict[str, bytes]] = {}
    for number in range(4):
        bucket = f"shard-{number}-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        content[bucket] = {}
        for index in range(number * 7):
            key = f"dir-{index % 3}/object-{index:03d}.bin"
            data = hashlib.sha256(f"{bucket}/{key}".encode()).digest() * (index * 37 % 2000 + 1)
            client.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"n": str(index)})
            content[bucket][key] = data
    return content


def restored_files(directory: Path) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    for path in directory.rglob("*"):
        if path.is_file():
            bucket, _, relative = path.relative_to(directory).as_posix().partition("/")
            found.setdefault(bucket, {})[relative] = path.read_bytes()
    return found


def test_shards_merge_into_one_snapshot_that_restores_and_equals_an_unsharded_one(
    s3_server: S3Endpoint, buckets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    lifeboat = write_policy(tmp_path / "sharded", s3_server.endpoint_url, list(buckets))
    parts = [lifeboat.part(f"{index}/3", "night-1")["snapshots"][0] for index in (1, 2, 3)]
    assert sum(part["objects_listed"] for part in parts) == sum(map(len, buckets.values()))
    assert lifeboat.snapshots() == []  # parts are no snapshots: not listed, not latest
    assert len(lifeboat.parts()) == 3
    check = lifeboat.json("check")
    assert check["ok"] and check["parts"] == 3 and check["snapshots"] == 0

    report = lifeboat.json("backup", "merge", "--source", SOURCE, "--part-of", "night-1")
    [merged] = report["snapshots"]
    assert report["errors"] == [] and merged["status"] == "good" and merged["shards"] == 3
    assert merged["objects_listed"] == merged["objects_downloaded"] == sum(map(len, buckets.values()))
    assert merged["started"] == min(part["started"] for part in parts)  # the run's time: its first part's
    assert [item["id"] for item in lifeboat.snapshots()] == [merged["id"]]
    assert lifeboat.parts() == []

    whole = write_policy(tmp_path / "whole", s3_server.endpoint_url, list(buckets))
    [unsharded] = whole.json("backup", "run", "--source", SOURCE)["snapshots"]
    mine, theirs = lifeboat.show(merged["id"]), whole.show(unsharded["id"])
    assert mine["fingerprint"] == theirs["fingerprint"]
    assert mine["census"] == theirs["census"]
    assert mine["entries"] == theirs["entries"]
    assert mine["meta"]["buckets"] == sorted(buckets)

    target = tmp_path / "restored"
    done = lifeboat("restore", SOURCE, "--to-dir", str(target))
    assert done.code == 0, done.stderr
    expected = {bucket: {key_to_path(key): data for key, data in objects.items()} for bucket, objects in buckets.items()}
    assert restored_files(target) == {bucket: objects for bucket, objects in expected.items() if objects}

    check = lifeboat.json("check", "--read-data")
    assert check["ok"] and check["parts"] == 0 and check["snapshots"] == 1


def test_a_second_sharded_run_is_incremental(
    s3_server: S3Endpoint, buckets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    lifeboat = write_policy(tmp_path, s3_server.endpoint_url, list(buckets))
    first = lifeboat.sharded("night-1", 3)
    client = s3_server.client()
    busy = max(buckets, key=lambda bucket: len(buckets[bucket]))
    changed = sorted(buckets[busy])[0]
    client.put_object(Bucket=busy, Key=changed, Body=b"changed")
    client.put_object(Bucket=sorted(buckets)[0], Key="new/object", Body=b"new" * 1000)

    second = lifeboat.sharded("night-2", 3)

    total = sum(map(len, buckets.values())) + 1
    assert second["objects_listed"] == total
    assert second["objects_downloaded"] == 2 and second["objects_reused"] == total - 2
    assert second["objects_new"] == 1 and second["objects_changed"] == 1 and second["objects_gone"] == 0
    assert second["bytes_read"] == len(b"changed") + 3000
    # two objects' chunks, the parts' and the merged snapshot's entries: the reused objects cost nothing
    assert second["chunks_new"] <= 2 + 3 + 1 and second["bytes_stored"] < first["bytes_stored"]
    assert second["status"] == "good" and second["anomalies"] == []
    assert [item["id"] for item in lifeboat.snapshots()] == [first["id"], second["id"]]
    census = lifeboat.show(second["id"])["census"]
    assert census["changed_fraction"] == round(1 / (total - 1), 4)

    target = tmp_path / "restored"
    assert lifeboat("restore", SOURCE, "--to-dir", str(target)).code == 0
    assert (target / busy / key_to_path(changed)).read_bytes() == b"changed"
    assert lifeboat.json("check", "--read-data")["ok"]


def test_a_merge_before_every_shard_has_run_commits_nothing_and_keeps_the_parts(
    s3_server: S3Endpoint, buckets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    lifeboat = write_policy(tmp_path, s3_server.endpoint_url, list(buckets))
    good = lifeboat.sharded("night-1", 3)
    lifeboat.part("1/3", "night-2")
    lifeboat.part("2/3", "night-2")
    dead = write_policy(tmp_path, f"http://127.0.0.1:{free_port()}", list(buckets))  # same repository
    failed = dead.part("3/3", "night-2", code=1)
    assert failed["snapshots"] == [] and "cannot list" in failed["errors"][0]["message"]
    assert len(lifeboat.parts()) == 2

    lifeboat = write_policy(tmp_path, s3_server.endpoint_url, list(buckets))
    report = lifeboat.json("backup", "merge", "--source", SOURCE, "--part-of", "night-2", code=1)

    assert report["snapshots"] == []
    assert "shard 3/3 of run night-2 of 'models' left no part" in report["errors"][0]["message"]
    assert [item["id"] for item in lifeboat.snapshots()] == [good["id"]]
    assert len(lifeboat.parts()) == 2  # kept: shard 3/3 may run again (cron), then a merge takes all three
    with RunHistory.open(tmp_path / "state.db") as history:  # one run per merge; parts are no runs
        runs = history.runs(RunKind.BACKUP, SOURCE)
    assert [run.status for run in runs] == [RunStatus.FAILED, RunStatus.OK]
    assert runs[0].error is not None and "shard 3/3" in runs[0].error

    lifeboat.part("3/3", "night-2")
    merged = lifeboat.json("backup", "merge", "--source", SOURCE, "--part-of", "night-2")["snapshots"][0]
    assert [item["id"] for item in lifeboat.snapshots()] == [good["id"], merged["id"]]
    assert lifeboat.parts() == []
    assert lifeboat.json("check", "--read-data")["ok"]
    check = lifeboat.json("check", "--read-data")
    assert check["ok"] and check["parts"] == 0


def test_shard_options_are_checked_before_anything_runs(s3_server: S3Endpoint, tmp_path: Path) -> None:
    lifeboat = write_policy(tmp_path, s3_server.endpoint_url, ["a-bucket", "b-bucket", "c-bucket"])
    cases = [
        (["--shard", "1/3"], "--shard and --part-of go together"),
        (["--shard", "4/3", "--part-of", "r"], "want I/N with 1 <= I <= N <= 64"),
        (["--shard", "one", "--part-of", "r"], "is not a shard like 2/3"),
        (["--shard", "1/3", "--part-of", "../x"], "is not a run name"),
    ]
    for options, message in cases:
        done = lifeboat("backup", "run", "--source", SOURCE, *options)
        assert done.code == 2 and message in done.stderr, (options, done.stderr)
    done = lifeboat("backup", "run", "--shard", "1/3", "--part-of", "r")
    assert done.code == 2 and "exactly one --source" in done.stderr
    assert not lifeboat.repository.exists() or lifeboat.parts() == []
