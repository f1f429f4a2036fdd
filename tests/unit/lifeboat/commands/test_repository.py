"""repo init, snapshots list|show, check and prune through the CLI, on a local repository."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from policy_builder import PolicyBuilder

from backup.repository import open_repository
from backup.repository.manifest import Entry
from backup.repository.repository import chunk_key
from lifeboat.cli import cli
from policies.loader import load_policy


def write_policy(root: Path, **repository: Any) -> Path:
    """``repository``: the repository's other keys (encryption...)."""
    policy = PolicyBuilder(root / "repo", state=root / "state.db", **repository)
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:1"], retention={"keep_last": 1})
    return policy.write(root / "lifeboat.yaml")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_policy(tmp_path)


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def add_snapshot(config: Path, data: bytes, status: str = "good") -> str:
    with open_repository(load_policy(config).repository, create=True) as repository:
        with repository.begin_snapshot("k8s-etcd", "etcd") as writer:
            stored = writer.write_stream(io.BytesIO(data))
            writer.add(Entry("snapshot.db", stored.size, stored.sha256, stored.chunks))
            header = writer.commit(status=status, census={"totals": {"keys": 3}})  # type: ignore[arg-type]
    time.sleep(1.05)  # snapshot ids carry seconds
    return header.id


def test_repo_init_creates_once_and_refuses_twice(config: Path) -> None:
    first = lifeboat(config, "repo", "init")
    assert first.exit_code == 0 and "created repository file://" in first.stdout
    second = lifeboat(config, "repo", "init")
    assert second.exit_code == 1 and "already holds a repository" in second.stderr


def test_repo_init_with_encryption_creates_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "repo.key"
    config = write_policy(tmp_path, encryption={"key_file": key_file})
    result = lifeboat(config, "repo", "init")
    assert result.exit_code == 0 and "encrypted with" in result.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text().strip()) == 64
    add_snapshot(config, b"secret etcd data" * 1000)
    key_file.write_text(os.urandom(32).hex())
    wrong = lifeboat(config, "snapshots", "list")
    assert wrong.exit_code == 1 and "wrong repository key" in wrong.stderr


def test_commands_on_a_missing_repository_say_how_to_create_it(config: Path) -> None:
    result = lifeboat(config, "snapshots", "list")
    assert result.exit_code == 2 and "lifeboat repo init" in result.stderr and "Traceback" not in result.stderr


def test_snapshots_list_and_show(config: Path) -> None:
    first = add_snapshot(config, b"a" * 3000)
    second = add_snapshot(config, b"b" * 5000, status="suspicious")
    listed = json.loads(lifeboat(config, "snapshots", "list", "--json").stdout)["snapshots"]
    assert [(s["id"], s["source"], s["kind"], s["status"], s["size"]) for s in listed] == [
        (first, "k8s-etcd", "etcd", "good", 3000),
        (second, "k8s-etcd", "etcd", "suspicious", 5000),
    ]
    assert all({"id", "source", "kind", "time", "status", "size"} <= set(s) for s in listed)
    table = lifeboat(config, "snapshots", "list", "--source", "k8s-etcd").stdout
    assert first in table and "suspicious" in table
    shown = json.loads(lifeboat(config, "snapshots", "show", first, "--json").stdout)
    assert shown["id"] == first and shown["census"] == {"totals": {"keys": 3}}
    missing = lifeboat(config, "snapshots", "show", "k8s-etcd-20200101T000000Z-abcd")
    assert missing.exit_code == 1 and "no snapshot k8s-etcd-20200101T000000Z-abcd" in missing.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_check_read_data_catches_damage_and_names_the_chunk(config: Path, tmp_path: Path, damage: str) -> None:
    snapshot = add_snapshot(config, os.urandom(3 * 1024 * 1024))
    assert lifeboat(config, "check", "--read-data").exit_code == 0
    with open_repository(load_policy(config).repository) as repository:
        [entry] = list(repository.entries(repository.read_header(snapshot)))
    victim = entry.chunks[1][0]
    path = tmp_path / "repo" / chunk_key(victim)
    raw = path.read_bytes()
    if damage == "flip":
        path.write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.unlink()
    result = lifeboat(config, "check", "--read-data", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    [problem] = document["problems"]
    assert problem["chunk"] == victim and problem["snapshot"] == snapshot
    assert problem["kind"] == ("missing-chunk" if damage == "delete" else "corrupt-chunk")
    human = lifeboat(config, "check", "--read-data-subset", "100%")
    assert human.exit_code == 1 and victim in human.stdout


def test_check_option_mistakes_are_usage_errors(config: Path) -> None:
    add_snapshot(config, b"x")
    assert lifeboat(config, "check", "--read-data", "--read-data-subset", "5").exit_code == 2
    bad = lifeboat(config, "check", "--read-data-subset", "150%")
    assert bad.exit_code == 2 and "at most 100%" in bad.stderr


def test_prune_dry_run_then_for_real(config: Path) -> None:
    old = add_snapshot(config, os.urandom(2 * 1024 * 1024))
    new = add_snapshot(config, os.urandom(2 * 1024 * 1024))
    preview = json.loads(lifeboat(config, "prune", "--dry-run", "--json").stdout)
    assert preview["forgotten"] == [old] and preview["kept"] == [new] and preview["dry_run"] is True
    assert len(json.loads(lifeboat(config, "snapshots", "list", "--json").stdout)["snapshots"]) == 2
    done = lifeboat(config, "prune")
    assert done.exit_code == 0 and f"forgot {old}" in done.stdout and "grace period" in done.stdout
    listed = json.loads(lifeboat(config, "snapshots", "list", "--json").stdout)["snapshots"]
    assert [s["id"] for s in listed] == [new]
