"""The drill restore key pair of deploy/s3/lifeboat-restore-policy.json, on moto's IAM: a restore
works with it (it reads, and writes and removes its lock file), a prune does not (it cannot delete a
backup). Backed up with an all-powerful user first, as the service would."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from integration.test_stores import ALLOW_S3, moto_auth
from policy_builder import PolicyBuilder

from backup.servers import EtcdProcess
from backup.sources.etcd.snapshot_file import verify_trailer
from lifeboat.cli import cli

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "deploy" / "s3" / "lifeboat-restore-policy.json"


def restore_statements(bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The shipped policy's statements, for ``bucket`` and ``prefix`` instead of its placeholders."""
    text = POLICY_FILE.read_text().replace("lifeboat-backups", bucket).replace("/prod/", f"/{prefix}/")
    statements: list[dict[str, Any]] = json.loads(text)["Statement"]
    return statements


def write_policy(directory: Path, endpoint: str, bucket: str, prefix: str, etcd: str, keys: tuple[str, str]) -> Path:
    config = directory / f"lifeboat-{uuid.uuid4().hex[:6]}.yaml"
    s3 = {"endpoint_url": endpoint, "access_key_id": keys[0], "secret_access_key": keys[1]}
    policy = PolicyBuilder(f"s3://{bucket}/{prefix}", state=directory / "state.db", s3=s3)
    policy.source("k8s-etcd", "etcd", endpoints=[etcd], retention={"keep_last": 1})
    return policy.write(config)


@pytest.fixture
def moto_requests() -> Iterator[list[str]]:
    """What moto's IAM check saw of each authenticated request (method, path, action, key): printed
    when a call that the policy allows is refused, so the refusal can be read from CI's output."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage()[:600])

    logger, handler = logging.getLogger("moto.iam.access_control"), Keep(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def test_the_restore_policy_restores_and_cannot_delete_a_backup(
    s3_server: Any, s3_bucket: str, etcd_server: EtcdProcess, tmp_path: Path, moto_requests: list[str]
) -> None:
    prefix = "prod"
    with moto_auth(s3_server.endpoint_url, {"service": [ALLOW_S3], "drill": restore_statements(s3_bucket, prefix)}) as users:
        service = write_policy(tmp_path, s3_server.endpoint_url, s3_bucket, prefix, etcd_server.endpoint, users["service"])
        drill = write_policy(tmp_path, s3_server.endpoint_url, s3_bucket, prefix, etcd_server.endpoint, users["drill"])
        assert lifeboat(service, "repo", "init").exit_code == 0
        for _ in range(2):  # two snapshots: keep_last 1 gives prune something to forget
            backed_up = lifeboat(service, "backup", "run", "--json")
            assert backed_up.exit_code == 0, backed_up.stderr

        restored = lifeboat(drill, "restore", "k8s-etcd", "--to-file", str(tmp_path / "snapshot.db"))
        assert restored.exit_code == 0, restored.stderr + "\nmoto saw:\n" + "\n".join(moto_requests[-6:])
        verify_trailer(tmp_path / "snapshot.db")
        key_id, secret = users["service"]
        client = boto3.client(
            "s3",
            endpoint_url=s3_server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        locks = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{prefix}/locks/").get("KeyCount", 0)
        assert locks == 0  # the restore's shared lock was taken and removed with the drill's keys

        pruned = lifeboat(drill, "prune")
        assert pruned.exit_code == 1
        assert "Access Denied" in pruned.stderr or "AccessDenied" in pruned.stderr, pruned.stderr
        listed = lifeboat(service, "snapshots", "list", "--json")
        assert len(json.loads(listed.stdout)["snapshots"]) == 2  # nothing was forgotten
