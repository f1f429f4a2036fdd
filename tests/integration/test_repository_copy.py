"""`lifeboat copy` (issue 18 item 10): snapshots into a second repository (the S3 test server, or a
local one with another key), verified there by `check --read-data` and a restore equal to the
original's; a rerun copies nothing; a damaged chunk stops that snapshot's copy, naming the chunk.

The S3 source on moto's server, the real CLI in process."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import S3Endpoint
from helpers import flip_chunk_byte, init_repository
from policy_builder import PolicyBuilder

from backup.repository import open_repository
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


def lifeboat(config: Path, *args: str) -> Ran:
    aws = {name: None for name in os.environ if name.startswith("AWS_")}
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env=aws, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True)
class Site:
    """Two policies with the same S3 source ``models``: the primary repository and the copy's."""

    primary: Path
    bucket: str
    builder: PolicyBuilder

    def repository(self, directory: Path, name: str, **settings: Any) -> Path:
        """A policy like the primary's whose repository is ``directory`` (or ``settings["url"]``)."""
        policy = self.builder.copy()
        url = settings.pop("url", f"file://{directory}")
        policy.document["repository"] = {"url": url, **settings}
        return policy.write(directory.parent / f"{name}.yaml")

    def backup(self) -> str:
        done = lifeboat(self.primary, "backup", "run", "--json")
        assert done.code == 0, done.stdout + done.stderr[-3000:]
        [snapshot] = done.json()["snapshots"]
        return str(snapshot["id"])

    def add_objects(self, s3: S3Endpoint, count: int, size: int = 3000) -> None:
        for _ in range(count):
            key = f"obj-{uuid.uuid4().hex[:8]}"
            s3.client().put_object(Bucket=self.bucket, Key=key, Body=os.urandom(size))


@pytest.fixture
def site(s3_server: S3Endpoint, tmp_path: Path) -> Site:
    bucket = f"copy-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    builder = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db").source(
        "models",
        "s3",
        endpoint_url=s3_server.endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        buckets=[bucket],
        retention={"keep_last": 10},
    )
    primary = init_repository(builder.write(tmp_path / "lifeboat.yaml"))
    found = Site(primary, bucket, builder)
    found.add_objects(s3_server, 6, size=2 * 1024 * 1024 + 17)  # several chunks per object
    return found


def repo_init(config: Path) -> Path:
    done = lifeboat(config, "repo", "init")
    assert done.code == 0, done.stderr
    return config


def _restored(config: Path, snapshot_id: str, into: Path) -> dict[str, bytes]:
    done = lifeboat(config, "restore", "models", "--snapshot", snapshot_id, "--to-dir", str(into), "--json")
    assert done.code == 0, done.stdout + done.stderr[-3000:]
    return {str(path.relative_to(into)): path.read_bytes() for path in sorted(into.rglob("*")) if path.is_file()}


def test_copy_to_s3_is_verified_there_restores_the_same_bytes_and_a_rerun_copies_nothing(
    site: Site, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    first = site.backup()
    site.add_objects(s3_server, 3)
    second = site.backup()
    offsite_bucket = f"offsite-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=offsite_bucket)
    s3 = {"endpoint_url": s3_server.endpoint_url, "access_key_id": "testing", "secret_access_key": "testing"}
    offsite = repo_init(
        site.repository(
            tmp_path / "offsite",
            "offsite",
            url=f"s3://{offsite_bucket}/copy",
            s3=s3,
            encryption={"key_file": str(tmp_path / "offsite.key")},
        )
    )

    copied = lifeboat(site.primary, "copy", "--to", str(offsite), "--json")
    assert copied.code == 0, copied.stdout + copied.stderr[-3000:]
    report = copied.json()
    assert report["ok"] is True and report["copied"] == 2 and report["skipped"] == 0
    assert [item["id"] for item in report["snapshots"]] == [first, second]
    assert report["chunks_written"] > 6 and report["bytes_written"] > 6 * 2 * 1024 * 1024

    checked = lifeboat(offsite, "check", "--read-data", "--json")
    assert checked.code == 0, checked.stdout
    assert checked.json()["ok"] is True and checked.json()["snapshots"] == 2
    listed = lifeboat(offsite, "snapshots", "list", "--json").json()["snapshots"]
    original = lifeboat(site.primary, "snapshots", "list", "--json").json()["snapshots"]
    assert listed == original  # same ids, times, status, sizes and entry counts

    from_copy = _restored(offsite, second, tmp_path / "from-copy")
    assert from_copy == _restored(site.primary, second, tmp_path / "from-primary")
    assert len(from_copy) == 9

    again = lifeboat(site.primary, "copy", "--to", str(offsite), "--json")
    assert again.code == 0, again.stdout + again.stderr[-3000:]
    assert again.json()["copied"] == 0 and again.json()["skipped"] == 2
    assert again.json()["chunks_written"] == 0 and again.json()["bytes_written"] == 0
    assert "skipped" in lifeboat(site.primary, "copy", "--to", str(offsite)).stdout


def test_copy_between_repositories_with_different_keys_maps_every_chunk_id(site: Site, tmp_path: Path) -> None:
    encrypted = site.builder.copy()
    encrypted.document["repository"]["encryption"] = {"key_file": str(tmp_path / "a.key")}
    encrypted.document["repository"]["url"] = f"file://{tmp_path / 'a'}"
    site = Site(repo_init(encrypted.write(tmp_path / "a.yaml")), site.bucket, encrypted)
    snapshot = site.backup()
    other = repo_init(site.repository(tmp_path / "b", "b", encryption={"key_file": str(tmp_path / "b.key")}))

    copied = lifeboat(site.primary, "copy", "--to", str(other), "--source", "models", "--snapshot", "latest")
    assert copied.code == 0, copied.stdout + copied.stderr[-3000:]
    assert f"copied  {snapshot}" in copied.stdout

    ids_a, ids_b = _chunk_ids(site.primary, snapshot), _chunk_ids(other, snapshot)
    assert ids_a and ids_b and not ids_a & ids_b  # other HMAC key, other ids: all of them mapped
    assert lifeboat(other, "check", "--read-data").code == 0
    assert _restored(other, snapshot, tmp_path / "from-b") == _restored(site.primary, snapshot, tmp_path / "from-a")


def _chunk_ids(config: Path, snapshot: str) -> set[str]:
    with open_repository(load_policy(config).repository) as repository:
        header = repository.read_header(snapshot)
        return {ref.id for entry in repository.entries(header) for ref in entry.chunks}


def test_a_damaged_chunk_stops_that_snapshots_copy_naming_it_and_commits_nothing_for_it(
    site: Site, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    intact = site.backup()
    site.add_objects(s3_server, 1, size=5000)
    damaged = site.backup()
    repository = tmp_path / "repo"
    with Repository.open(LocalStore(repository)) as opened:
        old = {ref for entry in opened.entries(opened.read_header(intact)) for ref in entry.chunks}
        new = {ref for entry in opened.entries(opened.read_header(damaged)) for ref in entry.chunks}
    [chunk] = sorted(new - old)  # the new object's one chunk
    flip_chunk_byte(repository, chunk)
    other = init_repository(site.repository(tmp_path / "other", "other"))

    copied = lifeboat(site.primary, "copy", "--to", str(other), "--json")
    assert copied.code == 1
    by_id = {item["id"]: item for item in copied.json()["snapshots"]}
    assert by_id[intact]["status"] == "copied"
    assert by_id[damaged]["status"] == "failed" and chunk.id in by_id[damaged]["message"]
    assert "corrupt" in by_id[damaged]["message"]
    assert chunk.id in copied.stderr
    listed = [item["id"] for item in lifeboat(other, "snapshots", "list", "--json").json()["snapshots"]]
    assert listed == [intact]
    assert not list((tmp_path / "other" / "snapshots" / "models").glob(f"{damaged}*"))


def test_copy_to_a_repository_that_does_not_exist_says_how_to_create_it(site: Site, tmp_path: Path) -> None:
    site.backup()
    missing = site.repository(tmp_path / "nowhere", "nowhere")

    copied = lifeboat(site.primary, "copy", "--to", str(missing), "--json")
    assert copied.code == 2
    assert copied.json()["error"]["kind"] == "no-repository"
    assert "repo init" in copied.json()["error"]["message"] and str(missing) in copied.json()["error"]["message"]
    assert not (tmp_path / "nowhere").exists()

    same = lifeboat(site.primary, "copy", "--to", str(site.primary))
    assert same.code == 2 and "is the repository being copied" in same.stderr
