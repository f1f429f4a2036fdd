"""Drills end to end against real etcd, ClickHouse, S3 and SMTP servers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import flip_chunk_byte, init_repository
from policy_builder import PolicyBuilder

from backup.repository import open_repository
from backup.sources import make_source
from backup.sources.base import Verdict, Verification
from drills.model import Status
from drills.runner import new_run_id, run_drill
from drills.scratch import make_scratch
from lifeboat.cli import cli
from policies.loader import load_policy

pytestmark = pytest.mark.integration
ALL_FAULTS = ("corrupt-chunk", "missing-chunk", "flaky-storage", "kill-target", "disaster", "verifier-canary")


@dataclass
class Setup:
    config: Path
    root: Path
    database: str
    bucket: str


def drill_policy(
    root: Path,
    etcd: Any,
    clickhouse: Any,
    s3: Any,
    smtp: Any,
    database: str,
    bucket: str,
    *,
    rpo: str = "1h",
    faults: tuple[str, ...] = ALL_FAULTS,
    sources: tuple[str, ...] = ("k8s-etcd", "features", "models"),
    etcd_bin: str = "etcd",
) -> PolicyBuilder:
    s3_keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    clickhouse_ports = {"port": clickhouse.tcp_port, "http_port": clickhouse.http_port}
    policy = PolicyBuilder(root / "repo", state=root / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=[etcd.endpoint])
    policy.source("features", "clickhouse", host="127.0.0.1", **clickhouse_ports, databases=[database])
    policy.source("models", "s3", endpoint_url=s3.endpoint_url, **s3_keys, buckets=[bucket])
    policy.scratch(
        "local",
        local={
            "workdir": root / "scratch",
            "etcd_bin": etcd_bin,
            "clickhouse": {"host": "127.0.0.1", **clickhouse_ports},
            "s3": {"endpoint_url": s3.endpoint_url, **s3_keys},
        },
    )
    objectives = {"rto": "30m", "rpo": rpo}
    policy.drill("nightly", sources=list(sources), objectives=objectives, faults=list(faults), notify=["team"])
    return policy.email("team", port=smtp.port, to=["ml-platform@example.org"], on=["drill"])


def seed_etcd(endpoint: str) -> None:
    for i in range(60):
        namespace = f"team-{i % 3}"
        key = f"/registry/pods/{namespace}/pod-{i}".encode()
        body = json.dumps({"key": _b64(key), "value": _b64(os.urandom(64))}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST"), timeout=10).read()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.fixture
def setup(
    tmp_path: Path,
    etcd_server: Any,
    clickhouse_server: Any,
    clickhouse_database: str,
    s3_server: Any,
    s3_bucket: str,
    smtp_inbox: Any,
) -> Setup:
    seed_etcd(etcd_server.endpoint)
    from clickhouse_driver import Client

    client = Client("127.0.0.1", port=clickhouse_server.tcp_port)
    client.execute(
        f"CREATE TABLE {clickhouse_database}.events (day Date, user UInt64, score Float64, tag String, "
        "doubled UInt64 MATERIALIZED user * 2) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user)"
    )
    client.execute(
        f"INSERT INTO {clickhouse_database}.events SELECT toDate('2026-09-01') + number % 90, number, number / 7, "
        "toString(number % 13) FROM system.numbers LIMIT 20000"
    )
    client.execute(
        f"CREATE VIEW {clickhouse_database}.daily AS SELECT day, count() AS n FROM {clickhouse_database}.events GROUP BY day"
    )
    s3 = s3_server.client()
    for i in range(30):
        s3.put_object(
            Bucket=s3_bucket, Key=f"models/m{i}.bin", Body=os.urandom(1000 + i * 500), ContentType="application/octet-stream"
        )
    policy = drill_policy(tmp_path, etcd_server, clickhouse_server, s3_server, smtp_inbox, clickhouse_database, s3_bucket)
    config = init_repository(policy.write(tmp_path / "lifeboat.yaml"))
    result = lifeboat(config, "backup", "run", "--json")
    assert result.exit_code == 0, result.output
    return Setup(config, tmp_path, clickhouse_database, s3_bucket)


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


def assert_no_leftovers(setup: Setup, clickhouse_server: Any, s3_server: Any) -> None:
    from clickhouse_driver import Client

    databases = [row[0] for row in Client("127.0.0.1", port=clickhouse_server.tcp_port).execute("SHOW DATABASES")]
    assert [name for name in databases if name.startswith("lifeboat_drill_")] == []
    buckets = [bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]]
    assert [name for name in buckets if name.startswith("lifeboat-drill-")] == []
    processes = subprocess.run(
        ["pgrep", "-af", str(setup.root / "scratch")], capture_output=True, text=True, check=False
    ).stdout
    assert processes.strip() == ""
    assert list((setup.root / "scratch").glob("*/")) in ([], [setup.root / "scratch" / "runs"])


def test_nightly_drill_over_three_sources_with_every_fault_passes_and_mails_the_team(
    setup: Setup, smtp_inbox: Any, clickhouse_server: Any, s3_server: Any
) -> None:
    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--report-dir", str(setup.root / "reports"))
    report = json.loads(result.stdout)
    failed = [
        (s["source"], st["name"], st["verdict"], st["message"])
        for s in report["sources"]
        for st in s["steps"]
        if st["verdict"] != "PASS"
    ]
    assert failed == [] and result.exit_code == 0 and report["verdict"] == "PASS"
    assert [s["source"] for s in report["sources"]] == ["k8s-etcd", "features", "models"]
    warnings = [json.loads(line) for line in result.stderr.splitlines() if '"level": "warning"' in line]
    # the flaky-storage fault's retries are its purpose, not news: debug lines, not warnings
    assert [line for line in warnings if line["event"] == "store.retry"] == [], len(warnings)
    assert len(warnings) <= 5, [line["event"] for line in warnings]
    for source in report["sources"]:
        names = [step["name"] for step in source["steps"]]
        assert names[:7] == ["select-snapshot", "rpo", "provision", "restore", "rto", "verify", "drift"]
        assert [n for n in names if n.startswith("fault:")] == [f"fault:{f}" for f in ALL_FAULTS]
        assert source["rto_seconds"] > 0 and source["rpo_seconds"] >= 0
    features = next(source for source in report["sources"] if source["source"] == "features")
    window = features["consistency"]  # the ClickHouse snapshot's consistency window, a line in every report
    assert window["window_seconds"] >= 0 and window["earliest"] <= window["latest"]
    assert "consistency window" in Path(report["report_files"]["html"]).read_text()
    assert "consistency window" in Path(report["report_files"]["text"]).read_text()

    etcd_canary = next(step for step in report["sources"][0]["steps"] if step["name"] == "fault:verifier-canary")
    for tamper in ("delete-key", "value-without-revision", "lease", "auth-user"):
        assert f"{tamper}: " in etcd_canary["message"], etcd_canary["message"]
    clickhouse_canary = next(step for step in report["sources"][1]["steps"] if step["name"] == "fault:verifier-canary")
    kinds = sorted(clickhouse_canary["details"]["tampers"])
    assert kinds == ["add-column", "duplicate-row", "materialized-value", "view-redefinition"], clickhouse_canary
    assert clickhouse_canary["details"]["blind"] == [] and clickhouse_canary["verdict"] == "PASS"
    caught = clickhouse_canary["details"]["tampers"]  # each: what it changed; caught: what verify said
    assert "added column lifeboat_canary" in caught["add-column"] and "differs from snapshot" in caught["add-column"]
    assert "redefined view" in caught["view-redefinition"] and "differs from snapshot" in caught["view-redefinition"]

    [mail] = smtp_inbox.wait_for(1)
    assert mail["Subject"].startswith("[lifeboat] nightly PASS: 3 sources, RTO ")
    kinds = {part.get_content_type() for part in mail.walk()}
    assert {"text/plain", "text/html"} <= kinds
    attachments = {part.get_filename(): part.get_content() for part in mail.iter_attachments()}
    assert any(name.endswith(".json") for name in attachments) and any(name.endswith(".xml") for name in attachments)

    junit = ET.parse(report["report_files"]["junit"]).getroot()
    cases = junit.findall(".//testcase")
    assert len(cases) == sum(len(s["steps"]) for s in report["sources"]) + len(report["steps"])
    assert not junit.findall(".//failure") and not junit.findall(".//error")
    history = json.loads(lifeboat(setup.config, "drill", "history", "nightly", "--json").stdout)["runs"]
    assert [run["run_id"] for run in history] == [report["run_id"]]
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_a_chunk_corrupted_on_disk_makes_the_restore_fail(setup: Setup, clickhouse_server: Any, s3_server: Any) -> None:
    policy = load_policy(setup.config)
    with open_repository(policy.repository) as repository:
        header = repository.find_snapshot("k8s-etcd")
        [entry] = list(repository.entries(header))
    flip_chunk_byte(setup.root / "repo", entry.chunks[0])
    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--no-email")
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["verdict"] == "FAIL"
    etcd = report["sources"][0]
    restore = next(step for step in etcd["steps"] if step["name"] == "restore")
    assert restore["verdict"] == "FAIL" and entry.chunks[0].id in restore["message"]
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_a_stale_snapshot_fails_the_rpo_step(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any, smtp_inbox: Any
) -> None:
    drill_policy(
        setup.root,
        etcd_server,
        clickhouse_server,
        s3_server,
        smtp_inbox,
        setup.database,
        setup.bucket,
        rpo="1s",
        faults=(),
        sources=("k8s-etcd",),
    ).write(setup.config)
    time.sleep(1.5)
    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--no-email")
    report = json.loads(result.stdout)
    rpo = next(step for step in report["sources"][0]["steps"] if step["name"] == "rpo")
    assert rpo["verdict"] == "FAIL" and "over the RPO objective 1.0s" in rpo["message"]
    assert result.exit_code == 1 and report["verdict"] == "FAIL"
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_a_scratch_server_that_cannot_start_is_an_error_not_a_pass(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any, smtp_inbox: Any
) -> None:
    drill_policy(
        setup.root,
        etcd_server,
        clickhouse_server,
        s3_server,
        smtp_inbox,
        setup.database,
        setup.bucket,
        etcd_bin=str(setup.root / "no-such-etcd"),
        faults=("disaster",),
        sources=("k8s-etcd",),
    ).write(setup.config)
    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--no-email")
    report = json.loads(result.stdout)
    restore = next(step for step in report["sources"][0]["steps"] if step["name"] == "restore")
    assert restore["verdict"] == "ERROR" and "no-such-etcd" in restore["message"]
    assert result.exit_code == 3 and report["verdict"] == "ERROR"
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_a_blind_verifier_is_caught_by_the_canary(setup: Setup, clickhouse_server: Any, s3_server: Any) -> None:
    class BlindVerifier:
        """The real source, except that its verification always says "match"."""

        def __init__(self, name: str, settings: Any) -> None:
            self._real = make_source(name, settings)
            self.name, self.kind = self._real.name, self._real.kind

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self._real, attribute)

        def verify(self, header: Any, target: Any, **_: Any) -> Verification:
            return Verification(Verdict.MATCH, "looks fine to me")

    policy = load_policy(setup.config)
    with open_repository(policy.repository) as repository:
        scratch = make_scratch(policy.scratch, new_run_id(__import__("datetime").datetime.now(__import__("datetime").UTC)))
        run = run_drill(policy, "nightly", repository=repository, scratch=scratch, make_source=BlindVerifier)  # type: ignore[arg-type]
    assert run.verdict is Status.FAIL
    for source in run.sources:
        canary = next(step for step in source.steps if step.name == "fault:verifier-canary")
        assert canary.verdict is Status.FAIL and "verifier blind" in canary.message
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_leftovers_of_a_killed_run_are_removed_by_the_janitor(setup: Setup, clickhouse_server: Any, s3_server: Any) -> None:
    from clickhouse_driver import Client

    dead = "20200101t000000z-dead"
    runs = setup.root / "scratch" / "runs"
    runs.mkdir(parents=True)
    (runs / f"{dead}.json").write_text(
        json.dumps(
            {
                "run_id": dead,
                "pid": 2**22 + 7,
                "host": os.uname().nodename,
                "started": "2020-01-01T00:00:00+00:00",
                "names": {},
                "pids": [],
            }
        )
    )
    (setup.root / "scratch" / dead / "k8s-etcd-1").mkdir(parents=True)
    Client("127.0.0.1", port=clickhouse_server.tcp_port).execute(
        f"CREATE DATABASE lifeboat_drill_{dead.replace('-', '_')}_1"
    )
    s3_server.client().create_bucket(Bucket=f"lifeboat-drill-{dead}-2")
    preview = lifeboat(setup.config, "janitor", "--dry-run")
    assert "would remove 3 leftover(s)" in preview.stdout
    done = lifeboat(setup.config, "janitor", "--json")
    removed = json.loads(done.stdout)["removed"]
    assert any(dead.replace("-", "_") in item and item.startswith("database") for item in removed)
    assert any(item.startswith("bucket") for item in removed) and any(item.startswith("workdir") for item in removed)
    assert_no_leftovers(setup, clickhouse_server, s3_server)
    status = json.loads(lifeboat(setup.config, "status", "--json").stdout)  # the dry run is not recorded
    assert status["janitor"]["last_success"]["figures"]["removed"] == 3
    assert status["janitor"]["last_run"]["origin"] == "cli"


def test_the_s3_canary_runs_every_tamper_kind_and_verification_catches_each(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any, smtp_inbox: Any
) -> None:
    client = s3_server.client()
    client.put_object_tagging(
        Bucket=setup.bucket, Key="models/m3.bin", Tagging={"TagSet": [{"Key": "stage", "Value": "prod"}]}
    )
    drill_policy(
        setup.root,
        etcd_server,
        clickhouse_server,
        s3_server,
        smtp_inbox,
        setup.database,
        setup.bucket,
        faults=("verifier-canary",),
        sources=("models",),
    ).write(setup.config)
    assert lifeboat(setup.config, "backup", "run", "--source", "models", "--json").exit_code == 0
    result = lifeboat(setup.config, "drill", "run", "nightly", "--json", "--no-email")
    report = json.loads(result.stdout)
    [models] = report["sources"]
    canary = next(step for step in models["steps"] if step["name"] == "fault:verifier-canary")
    assert canary["verdict"] == "PASS" and result.exit_code == 0, canary
    caught = canary["details"]["tampers"]
    assert sorted(caught) == ["extra-object", "metadata-only", "object-bytes", "tags-only"]
    assert canary["details"]["blind"] == [] and canary["details"]["unverified"] == []
    for name, said in caught.items():  # each names the object it changed, and verification caught it
        assert "models/m" in said or "lifeboat-canary" in said, (name, said)
        assert "differs from snapshot" in said, (name, said)
    assert_no_leftovers(setup, clickhouse_server, s3_server)


def test_each_s3_tamper_kind_is_a_mismatch_naming_the_object(setup: Setup, s3_server: Any) -> None:
    """The canary's S3 tamper kinds, each on its own restored copy: verification names the object it changed."""
    import re

    from backup.sources.base import RestoreOptions
    from drills.scratch.common import add_one_object, change_one_tag, change_user_metadata, overwrite_one_object

    client = s3_server.client()
    policy = load_policy(setup.config)
    source = make_source("models", policy.sources["models"])
    tampers = {
        "object-bytes": overwrite_one_object,
        "metadata-only": change_user_metadata,
        "tags-only": change_one_tag,
        "extra-object": add_one_object,
    }
    with open_repository(policy.repository) as repository:
        header = repository.find_snapshot("models")
        for name, tamper in tampers.items():
            options = RestoreOptions.of(to_bucket=f"tamper-{name}-{os.getpid()}")
            target = source.parse_target(options)
            source.restore(repository, header, target, options=options)
            assert source.verify(header, target, repository=repository).verdict is Verdict.MATCH
            said = tamper(client, target.bucket)
            [key] = re.findall(r"object '([^']+)'", said)
            found = source.verify(header, target, repository=repository)
            assert found.verdict is Verdict.MISMATCH, (name, said)
            assert len(found.differences) == 1 and key in found.differences[0], (name, said, found.differences)
            assert source.verify(header, target).verdict is Verdict.MISMATCH, name  # the fingerprint alone too
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=target.bucket, Key=item["Key"])
            client.delete_bucket(Bucket=target.bucket)


def test_each_drill_run_writes_a_signed_chained_evidence_record_that_verifies(
    setup: Setup, etcd_server: Any, clickhouse_server: Any, s3_server: Any, smtp_inbox: Any
) -> None:
    key_file = setup.root / "evidence"
    assert CliRunner().invoke(cli, ["evidence", "keygen", "--out", str(key_file)]).exit_code == 0
    policy = drill_policy(
        setup.root, etcd_server, clickhouse_server, s3_server, smtp_inbox, setup.database, setup.bucket, faults=()
    )
    policy.set("evidence", {"signing_key": {"file": key_file}})
    policy.write(setup.config)

    runs = [json.loads(lifeboat(setup.config, "drill", "run", "nightly", "--json", "--no-email").stdout) for _ in range(2)]

    assert [run["verdict"] for run in runs] == ["PASS", "PASS"]
    verified = lifeboat(setup.config, "evidence", "verify", "--json", "--public-key", f"{key_file}.pub")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["records"] == 2
    records = sorted((setup.root / "repo" / "evidence" / "nightly").glob("*.json"))
    first, second = (json.loads(path.read_bytes()) for path in records)
    assert [first["run_id"], second["run_id"]] == [run["run_id"] for run in runs]
    assert (first["sequence"], first["previous"], second["sequence"]) == (1, None, 2)
    assert second["previous"] == hashlib.sha256(records[0].read_bytes()).hexdigest()
    assert {source["source"] for source in second["sources"]} == {"k8s-etcd", "features", "models"}
    assert all(len(source["manifest_sha256"]) == 64 and source["bytes"] > 0 for source in second["sources"])
    scratch = second["scratch"]  # the local scratch servers are the sources' own test servers here
    assert scratch["kind"] == "local" and scratch["database"].startswith("lifeboat_drill_")
    assert scratch["shares_server_with_source"] is True and any("clickhouse" in s for s in scratch["shared_servers"])
    assert second["rto_met"] is True and second["lifeboat"]["version"] and second["policy_sha256"]
    assert [step["name"] for step in second["sources"][0]["steps"]][:3] == ["select-snapshot", "rpo", "provision"]
    report = json.loads(lifeboat(setup.config, "evidence", "report", "--format", "json").stdout)
    rows = report["drills"][0]["sources"][0]["runs"]
    assert [row["segregated"] for row in rows] == [False, False]  # said plainly: not segregated scratch
