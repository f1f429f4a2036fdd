"""``lifeboat doctor`` on real servers (issue 20, item 5): all PASS on a good setup; wrong S3
credentials, a bucket without Object Lock the policy asks for, a ClickHouse user that may not read
the database, and an unreachable SMTP server each FAIL with what to fix, exit 1, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import S3Endpoint
from helpers import SmtpSink
from policy_builder import PolicyBuilder

from backup.execute import free_port
from backup.servers import ClickHouseProcess, EtcdProcess
from lifeboat.cli import cli

pytestmark = pytest.mark.integration

NO_ACCESS = "lifeboat_doctor_no_access"  # may read only the database `system`


def doctor(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "doctor", *args], catch_exceptions=False)


def checks(result: Result) -> list[dict[str, Any]]:
    document = json.loads(result.stdout)
    assert set(document) >= {"ok", "checks"}
    found: list[dict[str, Any]] = document["checks"]
    return found


def s3_settings(s3: S3Endpoint, **keys: str) -> dict[str, Any]:
    return {
        "endpoint_url": s3.endpoint_url,
        "access_key_id": keys.get("access_key_id", s3.access_key_id),
        "secret_access_key": keys.get("secret_access_key", s3.secret_access_key),
    }


def good_policy(
    tmp_path: Path,
    s3: S3Endpoint,
    bucket: str,
    etcd: EtcdProcess,
    clickhouse: ClickHouseProcess,
    database: str,
    smtp: SmtpSink,
) -> PolicyBuilder:
    data = f"data-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=data)
    client.put_object(Bucket=data, Key="a/b.txt", Body=b"hello")
    policy = PolicyBuilder(f"s3://{bucket}/prod", state=tmp_path / "state.db", s3=s3_settings(s3))
    policy.source("main-etcd", "etcd", endpoints=[etcd.endpoint])
    policy.source(
        "events",
        "clickhouse",
        host=clickhouse.host,
        port=clickhouse.tcp_port,
        http_port=clickhouse.http_port,
        databases=[database],
    )
    policy.source("assets", "s3", buckets=[data], **s3_settings(s3))
    policy.email("team", port=smtp.port, to=["ops@example.org"], on=["drill"])
    return policy


def test_a_good_setup_passes_every_check_and_leaves_no_probe_behind(
    tmp_path: Path,
    s3_server: S3Endpoint,
    s3_bucket: str,
    etcd_server: EtcdProcess,
    clickhouse_server: ClickHouseProcess,
    clickhouse_database: str,
    smtp_inbox: SmtpSink,
) -> None:
    config = good_policy(
        tmp_path, s3_server, s3_bucket, etcd_server, clickhouse_server, clickhouse_database, smtp_inbox
    ).write(tmp_path / "lifeboat.yaml")
    result = doctor(config, "--json")
    found = checks(result)
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["ok"] is True
    assert [c for c in found if c["status"] != "PASS"] == []
    targets = {c["target"] for c in found}
    assert targets == {"repository", "source main-etcd", "source events", "source assets", "notifier team"}
    assert {"object lock", "clock skew", "list, put, get, delete"} <= {
        c["check"] for c in found if c["target"] == "repository"
    }
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []  # the probe is gone
    assert smtp_inbox.messages == []  # nothing sent

    table = doctor(config)
    assert table.exit_code == 0
    assert "TARGET" in table.stdout and "PASS" in table.stdout and "all checks passed" in table.stdout


def test_a_bucket_without_object_lock_fails_when_the_policy_asks_for_it(
    tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str, etcd_server: EtcdProcess
) -> None:
    policy = PolicyBuilder(
        f"s3://{s3_bucket}/prod",
        state=tmp_path / "state.db",
        s3=s3_settings(s3_server),
        object_lock={"mode": "GOVERNANCE", "days": 1},
    )
    policy.source("main-etcd", "etcd", endpoints=[etcd_server.endpoint])
    result = doctor(policy.write(tmp_path / "lifeboat.yaml"), "--json")
    assert result.exit_code == 1
    [lock] = [c for c in checks(result) if c["check"] == "object lock"]
    assert lock["status"] == "FAIL"
    assert "has none" in lock["message"] and "Object Lock" in lock["fix"]

    locked = f"locked-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    policy.set("repository.url", f"s3://{locked}/prod")
    result = doctor(policy.write(tmp_path / "lifeboat.yaml"), "--json")
    assert result.exit_code == 0, result.stdout
    assert {c["check"]: c["status"] for c in checks(result)}["object lock"] == "PASS"
    assert s3_server.client().list_object_versions(Bucket=locked).get("Versions", []) == []


@pytest.fixture
def authenticating_s3() -> Iterator[str]:
    """A moto server of its own that checks credentials (it knows no key at all)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto did not start")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_wrong_s3_credentials_fail_the_repository_check(
    tmp_path: Path, authenticating_s3: str, etcd_server: EtcdProcess
) -> None:
    s3 = {"endpoint_url": authenticating_s3, "access_key_id": "AKIAWRONG", "secret_access_key": "wrong-secret-value"}
    policy = PolicyBuilder("s3://repo-bucket/prod", state=tmp_path / "state.db", s3=s3)
    config = policy.source("main-etcd", "etcd", endpoints=[etcd_server.endpoint]).write(tmp_path / "lifeboat.yaml")
    result = doctor(config, "--json")
    assert result.exit_code == 1
    first = checks(result)[0]
    assert (first["target"], first["check"], first["status"]) == ("repository", "reachable, credentials", "FAIL")
    assert "refused the credentials" in first["message"] and "access_key_id" in first["fix"]
    assert "wrong-secret-value" not in result.stdout

    table = doctor(config)
    assert table.exit_code == 1 and "FAIL" in table.stdout and "Traceback" not in table.output


@pytest.fixture(scope="module")
def no_access_user(clickhouse_server: ClickHouseProcess) -> Iterator[str]:
    """A user allowed no database but ``system`` (users.xml allow_databases), added while the server runs."""
    users_path = clickhouse_server.workdir / "users.xml"
    text = users_path.read_bytes()
    if NO_ACCESS.encode() not in text:
        root = ET.fromstring(text)
        users = root.find("users")
        assert users is not None
        user = ET.SubElement(users, NO_ACCESS)
        ET.SubElement(user, "password").text = ""
        ET.SubElement(ET.SubElement(user, "networks"), "ip").text = "127.0.0.1"
        ET.SubElement(user, "profile").text = "default"
        ET.SubElement(user, "quota").text = "default"
        ET.SubElement(ET.SubElement(user, "allow_databases"), "database").text = "system"
        users_path.write_bytes(ET.tostring(root, xml_declaration=True, encoding="utf-8"))
    stamp = time.time() + 2  # the server notices a change by the file's time in whole seconds
    os.utime(users_path, (stamp, stamp))
    deadline = time.monotonic() + 30
    while True:
        request = urllib.request.Request(
            clickhouse_server.http_url, data=b"SELECT 1", headers={"X-ClickHouse-User": NO_ACCESS}
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail("the server did not load the user from users.xml")
            time.sleep(0.5)
    yield NO_ACCESS


def test_a_clickhouse_user_that_may_not_read_the_database_fails(
    tmp_path: Path, clickhouse_server: ClickHouseProcess, clickhouse_database: str, no_access_user: str
) -> None:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source(
        "events",
        "clickhouse",
        host=clickhouse_server.host,
        port=clickhouse_server.tcp_port,
        http_port=clickhouse_server.http_port,
        user=no_access_user,
        databases=[clickhouse_database],
    )
    result = doctor(policy.write(tmp_path / "lifeboat.yaml"), "--json")
    assert result.exit_code == 1, result.stdout
    by_check = {c["check"]: c for c in checks(result) if c["target"] == "source events"}
    assert by_check["connect, version"]["status"] == "PASS"
    denied = by_check[f"read {clickhouse_database}"]
    assert denied["status"] == "FAIL"
    assert "may not read" in denied["message"] and clickhouse_database in denied["fix"]


def test_an_unreachable_smtp_server_fails_and_nothing_is_sent(tmp_path: Path, etcd_server: EtcdProcess) -> None:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("main-etcd", "etcd", endpoints=[etcd_server.endpoint])
    policy.email("team", port=free_port(), to=["ops@example.org"], on=["drill"])
    result = doctor(policy.write(tmp_path / "lifeboat.yaml"), "--json")
    assert result.exit_code == 1
    [smtp] = [c for c in checks(result) if c["target"] == "notifier team"]
    assert smtp["status"] == "FAIL"
    assert "cannot connect" in smtp["message"] and "smtp.port" in smtp["fix"]
