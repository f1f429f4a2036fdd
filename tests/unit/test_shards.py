"""Sharded backup runs without servers: shard selection, part keys, the policy's shard rules, and what
prune and check do with the parts of a run whose merge is pending or never came."""

from __future__ import annotations

import io
import os
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.repository.maintenance import check, prune
from backup.repository.manifest import ChunkRef, Entry
from backup.repository.parts import PartOf, Shard, parse_part_key
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from policies.errors import ConfigError, IntegrityError
from policies.loader import parse_policy


def test_shards_parse_and_print_as_i_of_n() -> None:
    assert Shard.parse("2/3") == Shard(2, 3) and str(Shard.parse(" 1 / 64 ")) == "1/64"
    for text in ("0/3", "4/3", "1/65", "1/0", "a/b", "2", "-1/3"):
        with pytest.raises(ValueError):
            Shard.parse(text)


def test_configured_names_are_dealt_round_robin_each_to_exactly_one_shard() -> None:
    buckets = ["models", "datasets", "logs", "features", "raw"]
    shares = [Shard(index, 3).pick(buckets) for index in (1, 2, 3)]
    assert shares == [["datasets", "models"], ["features", "raw"], ["logs"]]
    assert Shard(2, 3).pick(reversed(buckets)) == shares[1], "the order given does not matter"


def test_discovered_names_are_split_by_their_own_hash_alone() -> None:
    tables = [f"features.table_{number}" for number in range(600)]
    owners = Counter(next(i for i in range(1, 5) if Shard(i, 4).owns(name)) for name in tables)
    assert sum(owners.values()) == 600 and all(100 < count < 200 for count in owners.values())
    for name in tables[:50]:
        assert sum(Shard(i, 4).owns(name) for i in range(1, 5)) == 1
    # a shard that discovers fewer tables (one created meanwhile) still owns the same ones
    assert [Shard(2, 4).owns(name) for name in tables[:100]] == [Shard(2, 4).owns(name) for name in tables[:100]]


def test_part_keys_round_trip_and_runs_are_safe_path_segments() -> None:
    part = PartOf("1234-a1b2c3", Shard(2, 3))
    assert part.key("models") == "parts/models/1234-a1b2c3/2of3.json.zst"
    assert parse_part_key(part.key("models")) == ("models", part)
    assert parse_part_key("snapshots/models/models-20270101T000000Z-ab12.json.zst") is None
    assert parse_part_key("parts/models/r/4of3.json.zst") is None
    for run in ("../x", "a/b", "", "x" * 65, ".hidden"):
        with pytest.raises(ValueError):
            PartOf(run, Shard(1, 2))


# ---- the policy ---------------------------------------------------------------------------------

SOURCES = """
sources:
  models: {kind: s3, endpoint_url: "http://minio:9000", buckets: [a, b]}
  features: {kind: clickhouse, host: ch, databases: [f], strategy: auto}
  warehouse: {kind: clickhouse, host: ch, databases: [w], strategy: logical}
  k8s-etcd: {kind: etcd, endpoints: ["http://etcd:2379"]}
"""


def issues(executor: str, extra: str = "") -> dict[str, str]:
    text = textwrap.dedent(SOURCES) + textwrap.dedent(executor) + extra
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, label="lifeboat.yaml", env={})
    return {issue.path: issue.message for issue in caught.value.issues}


def test_a_sound_shard_setting_is_accepted() -> None:
    text = textwrap.dedent(SOURCES) + "executor: {kind: kubernetes, kubernetes: {shards: {models: 2, warehouse: 16}}}\n"
    policy = parse_policy(text, label="lifeboat.yaml", env={})
    assert policy.executor.kubernetes.shards == {"models": 2, "warehouse": 16}


def test_shards_that_cannot_work_are_refused_with_their_path() -> None:
    found = issues("executor: {kubernetes: {shards: {models: 3, features: 2, k8s-etcd: 2, nowhere: 2}}}\n")
    assert "3 shards for 2 bucket(s)" in found["executor.kubernetes.shards.models"]
    assert "strategy auto" in found["executor.kubernetes.shards.features"]
    assert "only s3 (by bucket) and clickhouse (by table)" in found["executor.kubernetes.shards.k8s-etcd"]
    assert "undefined source 'nowhere'" in found["executor.kubernetes.shards.nowhere"]
    found = issues("executor: {kubernetes: {shards: {warehouse: 65, models: 0}}}\n")
    assert "less than or equal to 64" in found["executor.kubernetes.shards.warehouse"]
    assert "greater than or equal to 1" in found["executor.kubernetes.shards.models"]


def test_a_prune_grace_shorter_than_a_run_is_refused() -> None:
    found = issues(
        "executor: {kubernetes: {active_deadline: 8h, shards: {models: 2}}}\n", "repository: {prune: {grace: 6h}}\n"
    )
    assert "shorter than executor.kubernetes.active_deadline (8h)" in found["repository.prune.grace"]


# ---- prune and check with parts -------------------------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"))


def write_part(repository: Repository, part: PartOf, data: bytes) -> ChunkRef:
    """A part with one entry of ``data``; returns the reference of its (one) chunk."""
    with repository.begin_part("models", "s3", part) as writer:
        stored = writer.write_stream(io.BytesIO(data))
        writer.add(Entry("bucket/key", stored.size, stored.sha256, stored.chunks, {"bucket": "bucket", "key": "key"}))
        writer.commit()
    return stored.chunks[0]


def age(path: Path, days: float) -> None:
    moment = (datetime.now(UTC) - timedelta(days=days)).timestamp()
    os.utime(path, (moment, moment))


def test_prune_keeps_the_chunks_of_a_pending_part_and_deletes_an_abandoned_part(
    repository: Repository, tmp_path: Path
) -> None:
    part = PartOf("run-1", Shard(1, 2))
    chunk = write_part(repository, part, b"x" * 1000)
    root = tmp_path / "repo"
    age(root / chunk.key, 3)  # a chunk the part reused from an old snapshot, past the grace period
    assert repository.list_snapshots() == [] and len(repository.list_parts()) == 1

    kept = prune(repository, {"models": None}, grace=timedelta(days=1), dry_run=False)
    assert kept.chunks_deleted == 0 and kept.parts_deleted == []
    report = check(repository, read_data=1.0)
    assert report.ok and report.parts == 1 and report.snapshots == 0 and report.chunks_referenced == 2

    age(root / part.key("models"), 2)  # the run failed or its merge never came
    dry = prune(repository, {"models": None}, grace=timedelta(days=1), dry_run=True)
    assert dry.parts_deleted == ["models run run-1 shard 1/2"] and len(repository.list_parts()) == 1
    gone = prune(repository, {"models": None}, grace=timedelta(days=1), dry_run=False)
    assert gone.parts_deleted == ["models run run-1 shard 1/2"] and gone.chunks_deleted == 1
    assert repository.list_parts() == [] and not (root / chunk.key).exists()


def test_check_names_the_missing_chunk_of_a_part(repository: Repository, tmp_path: Path) -> None:
    chunk = write_part(repository, PartOf("run-1", Shard(2, 2)), b"y" * 1000)
    (tmp_path / "repo" / chunk.key).unlink()  # its pack, holding the part's entries too
    report = check(repository)
    assert not report.ok and [problem.kind for problem in report.problems] == ["missing-chunk"]
    assert f"pack {chunk.pack} is missing" in report.problems[0].message


def test_a_part_of_another_source_copied_over_a_parts_file_is_never_read_as_its_own(
    repository: Repository, tmp_path: Path
) -> None:
    """A part manifest of 'models' where a part of 'datasets' belongs (a file copied over another):
    it reads well, and is the wrong source's. Reading it (as the merge of a sharded run does) is
    refused, naming both, and check names it."""
    part = PartOf("run-1", Shard(1, 2))
    write_part(repository, part, b"z" * 1000)
    root = tmp_path / "repo"
    (root / part.key("datasets")).parent.mkdir(parents=True, exist_ok=True)
    (root / part.key("datasets")).write_bytes((root / part.key("models")).read_bytes())
    [stored] = repository.list_parts("datasets")
    with pytest.raises(IntegrityError, match=f"manifest of part {stored.key} is of source 'models', not 'datasets'"):
        repository.read_part(stored)
    report = check(repository)
    assert [problem.kind for problem in report.problems] == ["manifest"]
    assert "is of source 'models', not 'datasets'" in report.problems[0].message
