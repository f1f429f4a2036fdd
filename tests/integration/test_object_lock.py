"""A repository under S3 Object Lock, end to end through the CLI, on moto and on Ceph RGW: prune, repo init,
and a whole drill.

Both servers enforce GOVERNANCE retention: a manifest written with a day of retention cannot be
deleted for a day. Prune must still succeed (the forget is recorded in a tombstone, the manifest
deleted by a later prune once its retention has ended), and `repo init` must refuse a bucket that
has no Object Lock before it writes or generates anything.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import S3Endpoint
from helpers import init_repository, on_both_s3_servers
from integration.test_source_s3 import Cli
from policy_builder import PolicyBuilder

LOCK = {"mode": "GOVERNANCE", "days": 1}
PREFIX = "lifeboat"
# The faults a drill injects between the repository and the restore (each through its own store wrapper)
DRILL_FAULTS = ("corrupt-chunk", "missing-chunk", "flaky-storage", "verifier-canary")


def _keys(endpoint: S3Endpoint) -> dict[str, str]:
    return {
        "endpoint_url": endpoint.endpoint_url,
        "access_key_id": endpoint.access_key_id,
        "secret_access_key": endpoint.secret_access_key,
    }


def _policy(endpoint: S3Endpoint, repository_bucket: str, data_bucket: str, directory: Path, **repository: Any) -> Path:
    policy = PolicyBuilder(f"s3://{repository_bucket}/{PREFIX}", s3=_keys(endpoint), **repository).source(
        "models", "s3", buckets=[data_bucket], retention={"keep_last": 2}, **_keys(endpoint)
    )
    return policy.write(directory / "lifeboat.yaml")


def _bucket(endpoint: S3Endpoint, stem: str, *, locked: bool = False) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:10]}"
    endpoint.client().create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if locked else {}))
    return name


def _versions(endpoint: S3Endpoint, bucket: str, prefix: str) -> list[str]:
    """Every version and delete marker under ``prefix``: what is really left in the bucket."""
    answer = endpoint.client().list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/{prefix}")
    return sorted(item["Key"] for kind in ("Versions", "DeleteMarkers") for item in answer.get(kind, []))


@on_both_s3_servers()
def test_repo_init_on_a_bucket_without_object_lock_says_how_to_fix_it_and_leaves_nothing(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    plain, data = _bucket(s3_server, "plain"), _bucket(s3_server, "data")
    key_file = tmp_path / "repository.key"
    config = _policy(s3_server, plain, data, tmp_path, object_lock=LOCK, encryption={"key_file": str(key_file)})

    done = Cli(config, tmp_path)("repo", "init")

    assert done.code == 1, done.stderr
    assert f"bucket '{plain}'" in done.stderr and "has no Object Lock enabled" in done.stderr
    assert "--object-lock-enabled-for-bucket" in done.stderr and "object_lock" in done.stderr
    assert "Traceback" not in done.stderr
    assert not key_file.exists(), "a key file that encrypts nothing was left behind"
    assert s3_server.client().list_objects_v2(Bucket=plain).get("KeyCount", 0) == 0


@on_both_s3_servers()
def test_prune_of_a_locked_repository_forgets_now_and_deletes_the_manifest_when_its_retention_ends(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    client = s3_server.client()
    repository, data = _bucket(s3_server, "locked", locked=True), _bucket(s3_server, "data")
    cli = Cli(init_repository(_policy(s3_server, repository, data, tmp_path, object_lock=LOCK)), tmp_path)
    for name in ("a", "b", "c", "d"):  # unchanged: one changed object of five is no ransomware alarm
        client.put_object(Bucket=data, Key=f"{name}.txt", Body=name.encode())
    ids = []
    for generation in range(3):
        client.put_object(Bucket=data, Key="model.bin", Body=f"generation {generation}".encode())
        ids.append(cli.snapshot()["id"])

    promised = cli.json("prune", "--dry-run")
    pruned = cli.json("prune")

    assert promised["forgotten"] == pruned["forgotten"] == [ids[0]]
    assert sorted(pruned["kept"]) == sorted(ids[1:])  # ids have whole seconds: two in one second sort by suffix
    assert pruned["snapshots_locked"] == [ids[0]]  # locked, deleted later
    assert cli.snapshot_ids() == ids[1:]
    assert cli("snapshots", "show", ids[0]).code == 1  # forgotten: not found, though its manifest is still there
    assert _versions(s3_server, repository, "snapshots/") == sorted(
        f"{PREFIX}/snapshots/models/{snapshot_id}.json.zst" for snapshot_id in ids
    )
    human = cli("prune")  # again, still under retention: nothing to forget, no failure
    assert human.code == 0, human.stderr
    assert "1 forgotten snapshot(s) under Object Lock, deleted later" in human.stdout
    assert cli.snapshot_ids() == ids[1:]

    _end_retention(s3_server, repository, f"{PREFIX}/snapshots/models/{ids[0]}.json.zst")
    final = cli.json("prune")

    assert final["forgotten"] == [] and final["snapshots_locked"] == []
    assert final["manifests_deleted"] == [ids[0]]
    assert _versions(s3_server, repository, "snapshots/") == sorted(
        f"{PREFIX}/snapshots/models/{snapshot_id}.json.zst" for snapshot_id in ids[1:]
    )
    assert _versions(s3_server, repository, "forgotten/") == []
    assert cli.snapshot_ids() == ids[1:]


def _end_retention(endpoint: S3Endpoint, bucket: str, key: str) -> None:
    """Shorten a GOVERNANCE retention to a moment from now (allowed with the bypass), then wait it out."""
    client = endpoint.client()
    until = datetime.now(UTC) + timedelta(seconds=2)
    for version in client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
        client.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=version["VersionId"],
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
            BypassGovernanceRetention=True,
        )
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.5)


@on_both_s3_servers()
def test_a_drill_of_an_s3_source_from_a_locked_s3_repository_passes_and_leaves_nothing(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    client = s3_server.client()
    repository, data = _bucket(s3_server, "locked", locked=True), _bucket(s3_server, "models")
    for i in range(12):
        client.put_object(Bucket=data, Key=f"models/m{i}.bin", Body=os.urandom(1000 + i * 700), Metadata={"n": str(i)})
    policy = PolicyBuilder(f"s3://{repository}/{PREFIX}", s3=_keys(s3_server), object_lock=LOCK, state=tmp_path / "state.db")
    policy.source("models", "s3", buckets=[data], **_keys(s3_server))
    policy.scratch("local", local={"workdir": tmp_path / "scratch", "s3": _keys(s3_server)})
    policy.drill("nightly", sources=["models"], objectives={"rto": "30m", "rpo": "1h"}, faults=list(DRILL_FAULTS))
    cli = Cli(init_repository(policy.write(tmp_path / "lifeboat.yaml")), tmp_path)
    cli.snapshot()

    done = cli("drill", "run", "nightly", "--json", "--report-dir", str(tmp_path / "reports"))

    report = json.loads(done.stdout)
    steps = [(step["name"], step["verdict"], step["message"]) for step in report["sources"][0]["steps"]]
    assert [step for step in steps if step[1] != "PASS"] == [] and done.code == 0, done.stderr[-2000:]
    names = [name for name, _, _ in steps]
    assert names[:6] == ["select-snapshot", "rpo", "provision", "restore", "rto", "verify"]
    assert [name for name in names if name.startswith("fault:")] == [f"fault:{fault}" for fault in DRILL_FAULTS]
    buckets = [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]
    assert [name for name in buckets if name.startswith("lifeboat-drill-")] == []
