"""`lifeboat repo key add|list|remove` (issue 18 item 11): the key rotates without rewriting data; the
old key file stops opening the repository, the new one reads everything; the last key stays.

The S3 source on moto's server, local encrypted repositories, the real CLI in process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import S3Endpoint
from policy_builder import PolicyBuilder

from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from lifeboat.cli import cli

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


def lifeboat(config: Path, *args: str) -> Ran:
    aws = {name: None for name in os.environ if name.startswith("AWS_")}
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env=aws, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def _policy(s3: S3Endpoint, repository: Path, key_file: Path, bucket: str) -> PolicyBuilder:
    return PolicyBuilder(repository, state=repository.parent / "state.db", encryption={"key_file": str(key_file)}).source(
        "models",
        "s3",
        endpoint_url=s3.endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        buckets=[bucket],
    )


def _restored(config: Path, snapshot_id: str, into: Path) -> dict[str, bytes]:
    done = lifeboat(config, "restore", "models", "--snapshot", snapshot_id, "--to-dir", str(into), "--json")
    assert done.code == 0, done.stdout + done.stderr[-3000:]
    return {str(path.relative_to(into)): path.read_bytes() for path in sorted(into.rglob("*")) if path.is_file()}


def _data_files(repository: Path) -> dict[str, str]:
    """Every chunk and manifest, by path, with its digest: what a rotation must not rewrite."""
    return {
        str(path.relative_to(repository)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("chunks", "packs", "snapshots")
        for path in (repository / folder).rglob("*")
        if path.is_file()
    }


def test_a_rotated_key_opens_everything_and_the_old_one_nothing(s3_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = f"keys-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    for index in range(4):
        s3_server.client().put_object(Bucket=bucket, Key=f"obj-{index}", Body=os.urandom(300_000 + index))
    repository = tmp_path / "repo"
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    policy = _policy(s3_server, repository, old_key, bucket)
    old = policy.write(tmp_path / "old.yaml")
    assert lifeboat(old, "repo", "init").code == 0
    backed_up = lifeboat(old, "backup", "run", "--json")
    assert backed_up.code == 0, backed_up.stderr[-3000:]
    [snapshot] = [item["id"] for item in backed_up.json()["snapshots"]]
    before = _restored(old, snapshot, tmp_path / "before")
    data = _data_files(repository)

    [first] = lifeboat(old, "repo", "key", "list", "--json").json()["keys"]
    assert first["in_use"] is True
    added = lifeboat(old, "repo", "key", "add", "--new-key-file", str(new_key), "--json")
    assert added.code == 0, added.stderr
    assert added.json()["added"]["generated"] is True and added.json()["migrated"] is False
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    new_id = added.json()["added"]["id"]
    listed = lifeboat(old, "repo", "key", "list", "--json").json()["keys"]
    assert {(item["id"], item["in_use"]) for item in listed} == {(first["id"], True), (new_id, False)}
    in_use = lifeboat(old, "repo", "key", "remove", first["id"], "--json")
    assert in_use.code == 2 and "key_file" in in_use.json()["error"]["message"]

    new = policy.set("repository.encryption.key_file", str(new_key)).write(tmp_path / "new.yaml")
    table = lifeboat(new, "repo", "key", "list")
    assert new_id in table.stdout and first["id"] in table.stdout
    removed = lifeboat(new, "repo", "key", "remove", first["id"][:6])
    assert removed.code == 0, removed.stderr
    assert f"removed key {first['id']}" in removed.stdout

    refused = lifeboat(old, "snapshots", "list", "--json")
    assert refused.code == 1
    assert refused.json()["error"]["kind"] == "key" and "wrong repository key" in refused.stderr
    assert "Traceback" not in refused.stderr

    assert _restored(new, snapshot, tmp_path / "after") == before
    checked = lifeboat(new, "check", "--read-data", "--json")
    assert checked.code == 0 and checked.json()["ok"] is True
    assert _data_files(repository) == data  # nothing rewritten

    last = lifeboat(new, "repo", "key", "remove", new_id, "--json")
    assert last.code == 2 and "last key" in last.json()["error"]["message"]
    assert lifeboat(new, "check").code == 0


def test_a_repository_from_before_key_objects_is_migrated_in_place_by_the_first_key_add(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    repository = shutil.copytree(DATA / "repository-format1-encrypted", tmp_path / "repo")
    old_key = shutil.copyfile(DATA / "repository-format1-encrypted.key", tmp_path / "old.key")
    new_key = tmp_path / "new.key"
    policy = _policy(s3_server, repository, old_key, "unused")
    old = policy.write(tmp_path / "old.yaml")
    data = _data_files(repository)

    listed = lifeboat(old, "repo", "key", "list", "--json")
    assert listed.code == 0 and listed.json() == {"wrapped": False, "keys": []}
    assert lifeboat(old, "repo", "key", "remove", "abc").code == 2
    added = lifeboat(old, "repo", "key", "add", "--new-key-file", str(new_key), "--json")
    assert added.code == 0, added.stderr
    assert added.json()["migrated"] is True
    old_id = added.json()["in_use"]
    config = json.loads((repository / "config.json").read_text())
    assert config["format"] == 1 and "wrapped_keys" in config["encryption"]
    assert lifeboat(old, "check", "--read-data").code == 0  # the old key file still opens it

    new = policy.set("repository.encryption.key_file", str(new_key)).write(tmp_path / "new.yaml")
    assert lifeboat(new, "repo", "key", "remove", old_id).code == 0
    refused = lifeboat(old, "check")
    assert refused.code == 1 and "wrong repository key" in refused.stderr

    checked = lifeboat(new, "check", "--read-data", "--json")
    assert checked.code == 0 and checked.json()["ok"] is True
    with Repository.open(LocalStore(repository), key=bytes.fromhex(new_key.read_text().strip())) as opened:
        [header] = opened.list_snapshots()
        for entry in opened.entries(header):
            with (tmp_path / "out").open("wb") as out:
                opened.restore_entry(entry, out, snapshot=header.id)
    assert _data_files(repository) == data  # no chunk or manifest rewritten


def test_an_unencrypted_repository_has_no_key_to_rotate(tmp_path: Path) -> None:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("models", "s3", endpoint_url="http://127.0.0.1:9", buckets=["unused"])
    config = policy.write(tmp_path / "lifeboat.yaml")
    assert lifeboat(config, "repo", "init").code == 0
    refused = lifeboat(config, "repo", "key", "add", "--new-key-file", str(tmp_path / "k"), "--json")
    assert refused.code == 2 and "not encrypted" in refused.json()["error"]["message"]
