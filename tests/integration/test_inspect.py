"""``snapshots ls``, ``snapshots diff``, ``stats`` and the ``snapshots list`` filters on real
snapshots of all three kinds (etcd, ClickHouse, S3), taken twice with a change in between."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from policy_builder import PolicyBuilder
from test_source_contract import put_key

from lifeboat.cli import cli

pytestmark = pytest.mark.integration


@dataclass
class Story:
    config: Path
    first: dict[str, str]  # source -> snapshot id
    second: dict[str, str]
    prefix: str  # etcd keys

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.config), *args], catch_exceptions=False)

    def document(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.run(*args, "--json")
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        document = json.loads(result.stdout)
        assert isinstance(document, dict)
        return document


def sql(server: Any, statement: str) -> None:
    request = urllib.request.Request(server.http_url, data=statement.encode(), method="POST")
    urllib.request.urlopen(request, timeout=60).read()


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Story:
    etcd, clickhouse, s3 = (request.getfixturevalue(name) for name in ("etcd_server", "clickhouse_server", "s3_server"))
    root = tmp_path_factory.mktemp("inspect")
    database, bucket, namespace = (f"insp_{uuid.uuid4().hex[:8]}", f"insp-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8])
    prefix = f"/registry/configmaps/{namespace}"
    for number in range(5):
        put_key(etcd.endpoint, f"{prefix}/item-{number}", f"value-{number}")
    sql(clickhouse, f"CREATE DATABASE {database}")
    sql(
        clickhouse,
        f"CREATE TABLE {database}.events (day Date, user UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY day",
    )
    rows = "SELECT toDate('2026-09-01') + number % 40, number FROM system.numbers LIMIT 1000"
    sql(clickhouse, f"INSERT INTO {database}.events {rows}")
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for number in range(4):
        client.put_object(Bucket=bucket, Key=f"models/m{number}.bin", Body=bytes([number]) * 3000)
    builder = PolicyBuilder(root / "repo", state=root / "state.db")
    builder.source("kv", "etcd", endpoints=[etcd.endpoint])
    ports = {"port": clickhouse.tcp_port, "http_port": clickhouse.http_port}
    builder.source("ch", "clickhouse", host=clickhouse.host, **ports, databases=[database], strategy="logical")
    keys = {"access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key}
    builder.source("objects", "s3", endpoint_url=s3.endpoint_url, buckets=[bucket], **keys)
    story = Story(builder.write(root / "lifeboat.yaml"), {}, {}, prefix)
    assert story.run("repo", "init").exit_code == 0

    def backup() -> dict[str, str]:
        return {item["source"]: item["id"] for item in story.document("backup", "run")["snapshots"]}

    story.first = backup()
    time.sleep(1.05)  # snapshot ids carry seconds
    put_key(etcd.endpoint, f"{prefix}/item-new", "new")
    sql(clickhouse, f"INSERT INTO {database}.events VALUES ('2026-12-01', 5)")
    client.put_object(Bucket=bucket, Key="models/m9.bin", Body=b"new object")
    client.put_object(Bucket=bucket, Key="models/m0.bin", Body=b"changed")
    client.delete_object(Bucket=bucket, Key="models/m1.bin")
    story.second = backup()
    return story


def test_ls_shows_objects_with_size_and_time(story: Story) -> None:
    listed = story.document("snapshots", "ls", story.first["objects"])
    objects = {item["name"].split("/", 1)[1]: item for item in listed["entries"]}
    assert sorted(objects) == [f"models/m{n}.bin" for n in range(4)]
    assert objects["models/m2.bin"]["size"] == 3000 and objects["models/m2.bin"]["time"].startswith("20")
    assert listed["totals"] == {"entries": 4, "bytes": 12000}
    only = story.document("snapshots", "ls", story.first["objects"], "*/models/m3*")
    assert [item["name"].rsplit("/", 1)[1] for item in only["entries"]] == ["m3.bin"]
    text = story.run("snapshots", "ls", story.first["objects"])
    assert text.exit_code == 0 and "models/m2.bin" in text.stdout and "4 entries, 11.7 KiB" in text.stdout


def test_ls_shows_tables_and_partitions_with_rows(story: Story) -> None:
    entries = story.document("snapshots", "ls", story.first["ch"])["entries"]
    partitions = [item for item in entries if item.get("type") == "data"]
    assert sum(item["rows"] for item in partitions) == 1000 and len(partitions) == 2
    assert any(item.get("type") == "table" and item["name"].endswith("/events") for item in entries)


def test_ls_of_latest_shows_etcd_resources_and_namespaces_with_key_counts(story: Story) -> None:
    listed = story.document("snapshots", "ls", "latest")  # the newest of any source
    assert listed["snapshot"]["id"] in story.second.values()
    etcd = story.document("snapshots", "ls", story.second["kv"][:-2])  # a unique prefix
    namespace = story.prefix.rsplit("/", 1)[1]
    assert etcd["census"]["namespaces"][namespace] == 6
    assert etcd["census"]["resources"]["configmaps"] >= 6
    text = story.run("snapshots", "ls", story.second["kv"])
    assert f"6  {namespace}" in text.stdout


def test_diff_names_added_removed_changed_entries_and_totals(story: Story) -> None:
    diff = story.document("snapshots", "diff", story.first["objects"], story.second["objects"])
    assert [item["name"].rsplit("/", 1)[1] for item in diff["added"]] == ["m9.bin"]
    assert [item["name"].rsplit("/", 1)[1] for item in diff["removed"]] == ["m1.bin"]
    assert [item["name"].rsplit("/", 1)[1] for item in diff["changed"]] == ["m0.bin"]
    assert diff["totals"] | {"added_bytes": 0} == {
        "added": 1,
        "added_bytes": 0,
        "removed": 1,
        "removed_bytes": 3000,
        "changed": 1,
        "changed_bytes": len(b"changed") - 3000,
        "unchanged": 2,
    }
    text = story.run("snapshots", "diff", story.first["objects"], story.second["objects"])
    assert "+ " in text.stdout and "- " in text.stdout and "M " in text.stdout and "1 added" in text.stdout


def test_diff_of_etcd_and_clickhouse_shows_what_changed(story: Story) -> None:
    etcd = story.document("snapshots", "diff", story.first["kv"], story.second["kv"])
    namespace = story.prefix.rsplit("/", 1)[1]
    assert {"group": "namespaces", "name": namespace, "before": 5, "after": 6} in etcd["census"]
    assert etcd["totals"]["changed"] == 1  # the one snapshot file
    clickhouse = story.document("snapshots", "diff", story.first["ch"], story.second["ch"])
    assert [item["name"].rsplit("/", 1)[1] for item in clickhouse["added"]] == ["202612"]


def test_stats_shows_logical_and_stored_size_and_dedup(story: Story) -> None:
    stats = story.document("stats")
    sources = {item["source"]: item for item in stats["sources"]}
    assert set(sources) == {"kv", "ch", "objects"}
    objects = sources["objects"]
    assert objects["snapshots"] == 2 and objects["logical_bytes"] == 12000 + (2 * 3000 + 7 + 10)
    # unchanged objects are stored once: their second snapshot adds nothing but its entries stream
    assert 12017 < objects["unique_bytes"] < 12017 + 4000 and objects["dedup_ratio"] > 1.1
    assert 0 < objects["stored_bytes"] < objects["unique_bytes"] < objects["logical_bytes"]
    total = stats["total"]
    assert total["logical_bytes"] == sum(item["logical_bytes"] for item in sources.values())
    assert total["chunks"] <= sum(item["chunks"] for item in sources.values())
    assert stats["repository"]["chunks_stored"] >= total["chunks"] and stats["repository"]["missing_chunks"] == 0
    only = story.document("stats", "--source", "objects")
    assert [item["source"] for item in only["sources"]] == ["objects"]
    assert story.document("stats", "--source", "nope", code=2)["error"]["kind"] == "usage"
    text = story.run("stats")
    assert text.exit_code == 0 and "total" in text.stdout and "DEDUP" in text.stdout


def test_list_filters(story: Story) -> None:
    def ids(*args: str) -> list[str]:
        return [item["id"] for item in story.document("snapshots", "list", *args)["snapshots"]]

    assert ids("--latest", "1") == sorted(story.second.values(), key=ids().index)
    assert ids("--since", "1h") == ids()
    assert ids("--since", "2099-01-01T00:00:00Z") == []
    assert ids("--status", "suspicious") == []
    assert set(ids("--status", "good", "--source", "objects")) == {story.first["objects"], story.second["objects"]}
    assert story.document("snapshots", "list", "--since", "last tuesday", code=2)["error"]["kind"] == "usage"
