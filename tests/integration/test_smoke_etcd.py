"""etcd: keys written with etcdctl survive snapshot save -> restore -> a second etcd."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from backup.execute import run
from backup.servers import EtcdProcess, start_etcd

pytestmark = pytest.mark.integration

ETCDCTL_TIMEOUT = 30.0


def etcdctl(*args: str, endpoint: str | None = None) -> str:
    """Run etcdctl (API v3) and return its stdout as text."""
    endpoints = ("--endpoints", endpoint) if endpoint else ()
    completed = run(["etcdctl", *endpoints, *args], timeout=ETCDCTL_TIMEOUT, env={"ETCDCTL_API": "3"})
    return completed.stdout.decode()


def read_prefix(endpoint: str, prefix: str) -> dict[str, str]:
    """Every key under ``prefix`` with its value, read through etcdctl's JSON output."""
    answer = json.loads(etcdctl("get", "--prefix", prefix, "-w", "json", endpoint=endpoint))
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in answer.get("kvs", [])}


def test_snapshot_restores_into_a_new_member(etcd_server: EtcdProcess, tmp_path: Path, server_logs) -> None:
    prefix = f"/smoke/{uuid.uuid4().hex}/"
    written = {f"{prefix}key-{i:03d}": f"value {i} ü" for i in range(20)}
    for key, value in written.items():
        etcdctl("put", key, value, endpoint=etcd_server.endpoint)
    assert read_prefix(etcd_server.endpoint, prefix) == written
    revision = json.loads(etcdctl("get", prefix, "-w", "json", endpoint=etcd_server.endpoint))["header"]["revision"]

    snapshot = tmp_path / "etcd.snapshot"
    etcdctl("snapshot", "save", str(snapshot), endpoint=etcd_server.endpoint)
    status = json.loads(etcdctl("snapshot", "status", str(snapshot), "-w", "json"))
    assert status["revision"] == revision
    # totalKey counts every revision in the MVCC store (plus etcd's own keys), not live user keys.
    assert status["totalKey"] >= len(written)

    restored_dir = tmp_path / "restored"
    etcdctl("snapshot", "restore", str(snapshot), "--data-dir", str(restored_dir))
    with start_etcd(restored_dir, name="restored") as restored:
        server_logs.register("etcd (restored)", restored.log_tail)
        assert restored.endpoint != etcd_server.endpoint
        assert read_prefix(restored.endpoint, prefix) == written
        # The restored member is a working, writable etcd, not just a readable copy.
        etcdctl("put", f"{prefix}after-restore", "yes", endpoint=restored.endpoint)
        assert read_prefix(restored.endpoint, f"{prefix}after-restore") == {f"{prefix}after-restore": "yes"}
    assert not restored.process.alive()
