"""The source contract, run over every source kind through one fixture (as test_stores.py does for the
stores): etcd, ClickHouse (logical, the 18.16 server) and S3 (moto), on the session's real servers.

For each kind: a snapshot restored into a fresh target verifies as a match, and as a mismatch once
one item of the restored copy is tampered with; a restore into a non-empty target is refused without
``yes`` and leaves it as it was; a dry run writes nothing. Only the public interfaces are used: the
policy loader, ``open_repository``, ``run_backup`` / ``run_restore``, ``make_source`` and
``Source.verify``; what differs by kind (the target options, how to tamper with a copy, how to
occupy a target) lives in one small class per kind below.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner
from policy_builder import PolicyBuilder

from backup.jobs import run_backup, run_restore
from backup.repository import open_repository
from backup.repository.repository import Repository
from backup.servers import start_etcd
from backup.sources import make_source
from backup.sources.base import RestoreOptions, Verdict, flag_of
from lifeboat.cli import cli
from policies.errors import RestoreError
from policies.loader import load_policy
from policies.model import SourceSettings

pytestmark = pytest.mark.integration

SOURCE = "contract"


def restore_options(target: dict[str, Any], *, dry_run: bool = False, yes: bool = False) -> RestoreOptions:
    """The one place this test builds ``RestoreOptions`` (its shape is about to change): ``target``
    holds a kind's target options (``to_data_dir``, ``to_database``, ``to_bucket``...)."""
    return RestoreOptions.of(**target, dry_run=dry_run, yes=yes)


class Kind:
    """What the contract needs to know about one kind: its source settings, a fresh target's restore
    options, and how to tamper with, occupy and look at a target."""

    name: ClassVar[str]
    tampered_name: ClassVar[str]  # what a verification of a tampered copy names

    @classmethod
    def make(cls, request: pytest.FixtureRequest, directory: Path) -> Kind:
        """This kind on the session's server (started by its fixture when first asked for)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def fresh_target(self) -> dict[str, Any]:
        """Options naming a target that does not exist yet."""
        raise NotImplementedError

    def tamper(self, target: dict[str, Any]) -> None:
        """Change one item of the restored copy at ``target``."""
        raise NotImplementedError

    def occupy(self, target: dict[str, Any]) -> None:
        """Make ``target`` exist and hold something the snapshot does not."""
        raise NotImplementedError

    def contents(self, target: dict[str, Any]) -> Any:
        """What is at ``target`` (None: nothing there), to compare before and after a refused restore."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove the targets this kind made."""


class Etcd(Kind):
    name = "etcd"
    tampered_name = "configmaps"
    MEMBER = "contract"
    PEER = "http://127.0.0.1:2380"  # only named: a lone restored member never dials its peer URL

    def __init__(self, endpoint: str, directory: Path) -> None:
        self.endpoint = endpoint
        self.directory = directory
        self.prefix = f"/registry/configmaps/contract-{uuid.uuid4().hex[:8]}"
        for number in range(12):
            put_key(endpoint, f"{self.prefix}/item-{number}", f"value-{number}")

    @classmethod
    def make(cls, request: pytest.FixtureRequest, directory: Path) -> Kind:
        return cls(request.getfixturevalue("etcd_server").endpoint, directory)

    def settings(self) -> dict[str, Any]:
        return {"endpoints": [self.endpoint]}

    def fresh_target(self) -> dict[str, Any]:
        return {
            "to_data_dir": str(self.directory / f"restored-{uuid.uuid4().hex[:6]}"),
            "name": self.MEMBER,
            "initial_cluster": f"{self.MEMBER}={self.PEER}",
            "initial_advertise_peer_urls": self.PEER,
        }

    def tamper(self, target: dict[str, Any]) -> None:
        with start_etcd(Path(target["to_data_dir"]), name=self.MEMBER) as restored:
            put_key(restored.endpoint, f"{self.prefix}/intruder", "tampered")

    def occupy(self, target: dict[str, Any]) -> None:
        data_dir = Path(target["to_data_dir"])
        data_dir.mkdir(parents=True)
        (data_dir / "old-state").write_text("precious")

    def contents(self, target: dict[str, Any]) -> Any:
        data_dir = Path(target["to_data_dir"])
        if not data_dir.exists():
            return None
        return {str(path.relative_to(data_dir)): path.read_bytes() for path in data_dir.rglob("*") if path.is_file()}


class ClickHouse(Kind):
    name = "clickhouse"
    tampered_name = "events"

    def __init__(self, server: Any, database: str) -> None:
        self.server = server
        self.database = database
        self.made: list[str] = []
        self.sql(
            f"CREATE TABLE {database}.events (day Date, user UInt64, score Float64) "
            "ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, user)"
        )
        self.sql(
            f"INSERT INTO {database}.events SELECT toDate('2026-09-01') + number % 60, number, number / 7 "
            "FROM system.numbers LIMIT 3000"
        )

    @classmethod
    def make(cls, request: pytest.FixtureRequest, directory: Path) -> Kind:
        return cls(request.getfixturevalue("clickhouse_server"), request.getfixturevalue("clickhouse_database"))

    def sql(self, statement: str) -> str:
        request = urllib.request.Request(self.server.http_url, data=statement.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return str(response.read().decode())

    def settings(self) -> dict[str, Any]:
        ports = {"port": self.server.tcp_port, "http_port": self.server.http_port}
        return {"host": self.server.host, **ports, "databases": [self.database], "strategy": "logical"}

    def fresh_target(self) -> dict[str, Any]:
        database = f"contract_{uuid.uuid4().hex[:8]}"
        self.made.append(database)
        ports = {"to_port": self.server.tcp_port, "to_http_port": self.server.http_port}
        return {"to_host": self.server.host, **ports, "to_database": database}

    def tamper(self, target: dict[str, Any]) -> None:
        self.sql(f"INSERT INTO {target['to_database']}.events VALUES ('2026-09-02', 999999, 1.5)")

    def occupy(self, target: dict[str, Any]) -> None:
        self.sql(f"CREATE DATABASE {target['to_database']}")
        self.sql(f"CREATE TABLE {target['to_database']}.keep_me (k UInt8) ENGINE = Memory")

    def contents(self, target: dict[str, Any]) -> Any:
        database = target["to_database"]
        if self.sql(f"SELECT count() FROM system.databases WHERE name = '{database}'").strip() == "0":
            return None
        return self.sql(f"SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name").split()

    def cleanup(self) -> None:
        for database in self.made:
            self.sql(f"DROP DATABASE IF EXISTS {database}")


class S3(Kind):
    name = "s3"
    tampered_name = "models/m3.bin"

    def __init__(self, server: Any, bucket: str) -> None:
        self.server = server
        self.client = server.client()
        self.bucket = bucket
        self.made: list[str] = []
        for number in range(10):
            body = f"object {number} ".encode() * (number + 1) * 50
            self.client.put_object(Bucket=bucket, Key=f"models/m{number}.bin", Body=body, ContentType="text/plain")

    @classmethod
    def make(cls, request: pytest.FixtureRequest, directory: Path) -> Kind:
        return cls(request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))

    def settings(self) -> dict[str, Any]:
        keys = {"access_key_id": self.server.access_key_id, "secret_access_key": self.server.secret_access_key}
        return {"endpoint_url": self.server.endpoint_url, **keys, "buckets": [self.bucket]}

    def fresh_target(self) -> dict[str, Any]:
        bucket = f"contract-{uuid.uuid4().hex[:10]}"
        self.made.append(bucket)
        return {"to_bucket": bucket}

    def tamper(self, target: dict[str, Any]) -> None:
        self.client.put_object(Bucket=target["to_bucket"], Key="models/m3.bin", Body=b"tampered", ContentType="text/plain")

    def occupy(self, target: dict[str, Any]) -> None:
        self.client.create_bucket(Bucket=target["to_bucket"])
        self.client.put_object(Bucket=target["to_bucket"], Key="already-here", Body=b"precious")

    def contents(self, target: dict[str, Any]) -> Any:
        bucket = target["to_bucket"]
        if bucket not in [item["Name"] for item in self.client.list_buckets()["Buckets"]]:
            return None
        listed = self.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {item["Key"]: self.client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}

    def cleanup(self) -> None:
        existing = {item["Name"] for item in self.client.list_buckets()["Buckets"]}
        for bucket in [name for name in self.made if name in existing]:
            for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", []):
                self.client.delete_object(Bucket=bucket, Key=item["Key"])
            self.client.delete_bucket(Bucket=bucket)


def put_key(endpoint: str, key: str, value: str) -> None:
    """One key written through etcd's v3 HTTP gateway."""
    body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/kv/put", data=body, method="POST"), timeout=10).read()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---- one fixture for every kind -----------------------------------------------------------------


class Contract:
    """A kind with its policy's source settings and repository, holding one snapshot of the source."""

    def __init__(self, kind: Kind, directory: Path) -> None:
        self.kind = kind
        policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
        policy.source(SOURCE, kind.name, **kind.settings())
        self.config = policy.write(directory / "lifeboat.yaml")
        loaded = load_policy(self.config)
        self.settings: SourceSettings = loaded.sources[SOURCE]
        self.repository_settings = loaded.repository

    def repository(self) -> Repository:
        return open_repository(self.repository_settings, create=True)

    def restore(self, target: dict[str, Any], *, dry_run: bool = False, yes: bool = False) -> Any:
        with self.repository() as repository:
            options = restore_options(target, dry_run=dry_run, yes=yes)
            return run_restore(repository, SOURCE, self.settings, options)

    def verify(self, target: dict[str, Any]) -> Any:
        source = make_source(SOURCE, self.settings)
        with self.repository() as repository:
            header = repository.find_snapshot(SOURCE)
            return source.verify(header, source.parse_target(restore_options(target)), repository=repository)


@pytest.fixture(params=[Etcd, ClickHouse, S3], ids=lambda kind: kind.name)
def contract(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    kind: Kind = request.param.make(request, tmp_path)
    found = Contract(kind, tmp_path)
    with found.repository() as repository:
        run_backup(repository, SOURCE, found.settings)
    try:
        yield found
    finally:
        kind.cleanup()


# ---- the contract ---------------------------------------------------------------------------------


def test_a_restored_copy_verifies_and_a_tampered_one_does_not(contract: Contract) -> None:
    target = contract.kind.fresh_target()
    result = contract.restore(target)
    assert result.dry_run is False and result.bytes > 0

    verified = contract.verify(target)
    assert verified.verdict is Verdict.MATCH, verified.message

    contract.kind.tamper(target)
    tampered = contract.verify(target)
    assert tampered.verdict is Verdict.MISMATCH, tampered.message


def test_a_non_empty_target_is_refused_without_yes(contract: Contract) -> None:
    target = contract.kind.fresh_target()
    contract.kind.occupy(target)
    before = contract.kind.contents(target)
    assert before

    with pytest.raises(RestoreError, match="--yes"):
        contract.restore(target)
    assert contract.kind.contents(target) == before


def test_a_dry_run_writes_nothing(contract: Contract) -> None:
    target = contract.kind.fresh_target()
    result = contract.restore(target, dry_run=True)
    assert result.dry_run is True and result.plan
    assert contract.kind.contents(target) is None


def lifeboat_verify(contract: Contract, target: dict[str, Any], *extra: str) -> Any:
    """``lifeboat verify contract TARGET-OPTIONS`` through the real CLI (the same flags as restore)."""
    flags = [part for name, value in target.items() for part in (flag_of(name), str(value))]
    argv = ["--config", str(contract.config), "verify", SOURCE, *flags, *extra]
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def test_lifeboat_verify_exits_0_on_a_faithful_copy_and_1_naming_what_was_tampered(contract: Contract) -> None:
    target = contract.kind.fresh_target()
    contract.restore(target)

    matched = lifeboat_verify(contract, target)
    assert matched.exit_code == 0, matched.output
    assert matched.stdout.startswith(f"match: {SOURCE} snapshot {SOURCE}-")

    contract.kind.tamper(target)
    differs = lifeboat_verify(contract, target, "--json")
    assert differs.exit_code == 1, differs.output
    document = json.loads(differs.stdout)
    assert document["verdict"] == "mismatch" and document["source"] == SOURCE
    assert document["differences"], document
    assert contract.kind.tampered_name in " ".join(document["differences"]) + document["message"]


def test_lifeboat_verify_refuses_another_kinds_target_options(contract: Contract) -> None:
    other = "--to-bucket" if contract.kind.name != "s3" else "--to-database"
    refused = lifeboat_verify(contract, {**contract.kind.fresh_target()}, other, "x")
    assert refused.exit_code != 0
    assert f"{other}" in refused.output and "not" in refused.output
