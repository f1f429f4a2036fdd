"""The drill's drift step against real servers: a snapshot that saw only part of its source (an S3
endpoint whose listings end halfway, as issue 13 saw) FAILs the drill, while a normal snapshot, a
source that really shrank and a source that grew since its snapshot pass; a live source that cannot
be read is an ERROR. ClickHouse and etcd: the live census is read (system.parts, the JSON gateway)
and compared with the snapshot's and the previous snapshot's."""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner, Result
from helpers import http_serving, init_repository
from policy_builder import PolicyBuilder

from backup.execute import free_port
from backup.repository import open_repository
from backup.sources import make_source
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration
OBJECTS = 34


# ---- an S3 endpoint whose listings end early ----------------------------------------------------


class TruncatingProxy:
    """A relay in front of an S3 endpoint that answers every ListObjectsV2 with its first ``page`` keys
    and ``IsTruncated: false``: a listing that ends halfway and says it is complete. Every other
    request (the GETs of the objects) passes through unchanged."""

    def __init__(self, upstream: str, page: int) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.page = page
        self.listings = 0
        self.endpoint_url = ""  # set once it serves
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.relay(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.handler = Handler

    def relay(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        path = request.path
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        listing = request.command == "GET" and query.get("list-type") == ["2"]
        if listing:
            self.listings += 1
            if "max-keys" not in query:
                path += f"&max-keys={self.page}"
        hop = {"content-length", "transfer-encoding", "connection"}
        headers = {name: value for name, value in request.headers.items() if name.lower() not in hop}
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request(request.command, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            answer_headers = response.getheaders()
            status = response.status
        finally:
            connection.close()
        if listing:
            data = data.replace(b"<IsTruncated>true</IsTruncated>", b"<IsTruncated>false</IsTruncated>")
        request.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in hop:
                request.send_header(name, value)
        if request.command == "HEAD":
            request.send_header("Content-Length", dict(answer_headers).get("Content-Length", "0"))
        else:
            request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)


@pytest.fixture
def truncating_s3(s3_server: Any) -> Iterator[TruncatingProxy]:
    proxy = TruncatingProxy(s3_server.endpoint_url, page=OBJECTS // 2)
    with http_serving(proxy.handler) as port:
        proxy.endpoint_url = f"http://127.0.0.1:{port}"
        yield proxy


# ---- policy, data, CLI --------------------------------------------------------------------------


@dataclass
class Site:
    root: Path
    etcd: Any
    clickhouse: Any
    s3: Any
    database: str
    bucket: str
    resource: str  # an etcd resource of this test only: /registry/<resource>/<namespace>/<name>

    def config(self, *, sources: str, s3_endpoint: str | None = None, name: str = "lifeboat.yaml") -> Path:
        """The policy of these sources (``sources``: a YAML list, "[models]"), its repository made."""
        keys = {"access_key_id": "testing", "secret_access_key": "testing"}
        ports = {"port": self.clickhouse.tcp_port, "http_port": self.clickhouse.http_port}
        policy = PolicyBuilder(self.root / "repo", state=self.root / "state.db")
        policy.source("k8s-etcd", "etcd", endpoints=[self.etcd.endpoint])
        policy.source("features", "clickhouse", host="127.0.0.1", **ports, databases=[self.database])
        policy.source("models", "s3", endpoint_url=s3_endpoint or self.s3.endpoint_url, **keys, buckets=[self.bucket])
        local = {
            "workdir": self.root / "scratch",
            "etcd_bin": "etcd",
            "clickhouse": {"host": "127.0.0.1", **ports},
            "s3": {"endpoint_url": self.s3.endpoint_url, **keys},
        }
        policy.scratch("local", local=local)
        objectives = {"rto": "30m", "rpo": "1h"}
        policy.drill("nightly", sources=yaml.safe_load(sources), objectives=objectives, faults=[])
        return init_repository(policy.write(self.root / name))


@pytest.fixture
def site(
    tmp_path: Path, etcd_server: Any, clickhouse_server: Any, clickhouse_database: str, s3_server: Any, s3_bucket: str
) -> Site:
    return Site(
        tmp_path, etcd_server, clickhouse_server, s3_server, clickhouse_database, s3_bucket, f"drift{uuid.uuid4().hex[:8]}"
    )


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def backup(config: Path, source: str) -> dict[str, Any]:
    result = lifeboat(config, "backup", "run", "--source", source, "--json")
    assert result.exit_code == 0, result.output
    [snapshot] = json.loads(result.stdout)["snapshots"]
    return dict(snapshot)


def drill(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = lifeboat(config, "drill", "run", "nightly", "--json", "--no-email", *extra)
    return result.exit_code, json.loads(result.stdout)


def steps_of(report: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    [found] = [item for item in report["sources"] if item["source"] == source]
    return {step["name"]: step for step in found["steps"]}


def put_objects(s3: Any, bucket: str, count: int, *, start: int = 0) -> None:
    """Objects of one size: half of them is half the bytes, which the anomaly guard (more than half
    gone) lets through, as it did in issue 13."""
    client = s3.client()
    for number in range(start, start + count):
        client.put_object(Bucket=bucket, Key=f"models/m{number:03d}.bin", Body=os.urandom(500))


def census_of(config: Path, source: str) -> dict[str, Any]:
    policy = load_policy(config)
    with open_repository(policy.repository) as repository:
        return dict(repository.find_snapshot(source).census)


# ---- S3 -----------------------------------------------------------------------------------------


def test_a_listing_that_ends_halfway_fails_the_drill_on_drift_naming_the_bucket(
    site: Site, truncating_s3: TruncatingProxy
) -> None:
    put_objects(site.s3, site.bucket, OBJECTS)
    config = site.config(sources="[models]")
    backup(config, "models")  # a whole listing: the previous snapshot holds all 34
    partial = site.config(sources="[models]", s3_endpoint=truncating_s3.endpoint_url, name="through-the-proxy.yaml")
    snapshot = backup(partial, "models")
    assert truncating_s3.listings >= 1
    # The premise, as issue 13 saw it: the backup path takes half a listing for a good snapshot.
    assert snapshot["status"] == "good"
    assert census_of(config, "models")["buckets"][site.bucket]["objects"] == OBJECTS // 2

    code, report = drill(config, "--report-dir", str(site.root / "reports"))
    steps = steps_of(report, "models")
    assert steps["verify"]["verdict"] == "PASS"  # the restored copy is faithful to a partial snapshot
    drift = steps["drift"]
    assert drift["verdict"] == "FAIL", drift
    assert f"bucket {site.bucket}" in drift["message"] and f"17 of {OBJECTS} objects" in drift["message"]
    assert (code, report["verdict"]) == (1, "FAIL")
    # The step is in every report, as a failure.
    files = report["report_files"]
    junit = ET.parse(files["junit"]).getroot()
    [case] = [case for case in junit.iter("testcase") if case.get("name") == "drift"]
    assert case.find("failure") is not None and "17 of 34 objects" in (case.find("failure").get("message") or "")
    assert "drift" in Path(files["html"]).read_text() and "17 of 34 objects" in Path(files["html"]).read_text()
    text = Path(files["text"]).read_text()
    assert "FAIL  models / drift: " in text and "17 of 34 objects" in text


def test_a_whole_snapshot_passes_the_drift_step_and_growth_since_is_no_failure(site: Site) -> None:
    put_objects(site.s3, site.bucket, OBJECTS)
    config = site.config(sources="[models]")
    backup(config, "models")
    backup(config, "models")
    put_objects(site.s3, site.bucket, 20, start=OBJECTS)  # the source grew after the snapshot
    code, report = drill(config)
    drift = steps_of(report, "models")["drift"]
    assert (drift["verdict"], code, report["verdict"]) == ("PASS", 0, "PASS"), drift
    assert f"the snapshot holds {OBJECTS} objects" in drift["message"]
    assert f"the live source now {OBJECTS + 20} objects" in drift["message"] and "the previous snapshot" in drift["message"]


def test_a_source_that_really_shrank_passes_the_drift_step(site: Site) -> None:
    put_objects(site.s3, site.bucket, OBJECTS)
    config = site.config(sources="[models]")
    backup(config, "models")
    client = site.s3.client()
    for number in range(15):  # deleted at the source (under the anomaly guard's half), then a new snapshot
        client.delete_object(Bucket=site.bucket, Key=f"models/m{number:03d}.bin")
    second = backup(config, "models")
    assert second["status"] == "good"
    code, report = drill(config)
    drift = steps_of(report, "models")["drift"]
    assert (drift["verdict"], code, report["verdict"]) == ("PASS", 0, "PASS"), drift
    # compared with both: the previous snapshot held 34, the snapshot and the live source hold 19
    assert drift["details"]["previous"]["objects"] == OBJECTS
    assert drift["details"]["snapshot"]["objects"] == drift["details"]["live"]["objects"] == OBJECTS - 15


def test_a_live_source_that_cannot_be_read_is_a_drift_error_never_a_pass(site: Site) -> None:
    put_objects(site.s3, site.bucket, OBJECTS)
    backup(site.config(sources="[models]"), "models")
    gone = site.config(sources="[models]", s3_endpoint=f"http://127.0.0.1:{free_port()}", name="source-down.yaml")
    code, report = drill(gone)
    steps = steps_of(report, "models")
    assert steps["verify"]["verdict"] == "PASS"  # the restore needs the repository and scratch only
    assert steps["drift"]["verdict"] == "ERROR", steps["drift"]
    assert "live source" in steps["drift"]["message"]
    assert (code, report["verdict"]) == (3, "ERROR")


# ---- ClickHouse ---------------------------------------------------------------------------------


def _clickhouse(site: Site, statement: str) -> None:
    from clickhouse_driver import Client

    Client("127.0.0.1", port=site.clickhouse.tcp_port).execute(statement)


ROWS = "SELECT toDate('2026-09-01') + number % 90 AS day, number AS user, number / 7 AS score FROM system.numbers LIMIT 9000"


def test_clickhouse_a_snapshot_with_fewer_rows_than_the_live_table_and_the_previous_snapshot_fails(site: Site) -> None:
    table = f"{site.database}.events"
    _clickhouse(
        site,
        f"CREATE TABLE {table} (day Date, user UInt64, score Float64) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user)",
    )
    _clickhouse(site, f"INSERT INTO {table} {ROWS}")
    config = site.config(sources="[features]")
    backup(config, "features")
    live = make_source("features", load_policy(config).sources["features"]).census()
    assert live["tables"][table]["rows"] == 9000 and live["totals"]["rows"] == 9000  # read from system.parts
    _clickhouse(site, f"ALTER TABLE {table} DROP PARTITION 202609")
    backup(config, "features")  # 6000 rows
    _clickhouse(site, f"INSERT INTO {table} SELECT * FROM ({ROWS}) WHERE toYYYYMM(day) = 202609")  # back to 9000
    code, report = drill(config)
    drift = steps_of(report, "features")["drift"]
    assert drift["verdict"] == "FAIL", drift
    assert f"table {table}: 6000 of 9000 rows" in drift["message"]
    assert (code, report["verdict"]) == (1, "FAIL")


# ---- etcd ---------------------------------------------------------------------------------------


def _etcd(site: Site, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{site.etcd.endpoint}{path}", data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def _put_keys(site: Site, numbers: range) -> None:
    for number in numbers:
        key = f"/registry/{site.resource}/team-{number % 2}/item-{number:03d}"
        _etcd(site, "/v3/kv/put", {"key": _b64(key), "value": _b64(os.urandom(8).hex())})


def test_etcd_a_snapshot_with_fewer_keys_than_the_live_cluster_and_the_previous_snapshot_fails(site: Site) -> None:
    _put_keys(site, range(40))
    config = site.config(sources="[k8s-etcd]")
    backup(config, "k8s-etcd")
    live = make_source("k8s-etcd", load_policy(config).sources["k8s-etcd"]).census()
    assert live["resources"][site.resource] == 40  # counted through the gateway, keys only
    prefix = f"/registry/{site.resource}/"
    _etcd(
        site,
        "/v3/kv/deleterange",
        {"key": _b64(prefix + "team-0/"), "range_end": _b64(prefix + "team-0" + chr(ord("/") + 1))},
    )
    backup(config, "k8s-etcd")  # 20 keys of the resource left
    _put_keys(site, range(0, 40, 2))  # back to 40
    code, report = drill(config)
    drift = steps_of(report, "k8s-etcd")["drift"]
    assert drift["verdict"] == "FAIL", drift
    assert f"resource {site.resource}: 20 of 40 keys" in drift["message"]
    assert (code, report["verdict"]) == (1, "FAIL")
