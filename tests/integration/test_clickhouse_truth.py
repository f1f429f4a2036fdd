"""Truthful ClickHouse snapshots and restores (issue 13, items 1, 2 and 5) on the real 18.16 server.

* MATERIALIZED columns are exported, restored with their stored values and covered by the hash.
* A user profile that cuts results short fails the backup, naming the partition; nothing is committed.
* A copy the restore verified and found wrong is a FAIL (exit 1, drill FAIL), not "could not verify".
* A partition whose bytes are not the ones its snapshot recorded (each chunk whole) fails the restore.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from clickhouse_driver import Client
from helpers import init_repository, rewrite_manifest
from policy_builder import PolicyBuilder

from backup.jobs import run_backup
from backup.repository import open_repository
from backup.repository.repository import Repository, WriteStats
from backup.servers import ClickHouseProcess
from backup.sources.base import RestoreOptions, Verdict
from backup.sources.clickhouse.fingerprint import HASH_MODULUS
from backup.sources.clickhouse.source import ClickHouseSource
from lifeboat.cli import cli
from policies.errors import SourceError
from policies.model import ClickHouseSettings
from policies.model import Repository as RepositorySettings

pytestmark = pytest.mark.integration

SOURCE = "features"
LIMITED = "lifeboat_limited"  # a profile with max_result_rows = 32768, result_overflow_mode = 'break'
LIMITED_READONLY = "lifeboat_limited_ro"  # the same limits, readonly: it may not lift them
RESULT_LIMIT = 32768


def settings_for(server: ClickHouseProcess, database: str, **extra: Any) -> ClickHouseSettings:
    return ClickHouseSettings.model_validate(
        {
            "kind": "clickhouse",
            "host": server.host,
            "port": server.tcp_port,
            "http_port": server.http_port,
            "databases": [database],
            "parallel": 2,
            **extra,
        }
    )


def http(server: ClickHouseProcess, statement: str, *, user: str = "default", **settings: str) -> bytes:
    query = "&".join(f"{name}={value}" for name, value in settings.items())
    request = urllib.request.Request(
        f"{server.http_url}/?{query}", data=statement.encode(), method="POST", headers={"X-ClickHouse-User": user}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        return body


def restore(source: ClickHouseSource, repository: Repository, header: Any, server: ClickHouseProcess, database: str) -> Any:
    options = RestoreOptions.of(
        to_host=server.host, to_port=server.tcp_port, to_http_port=server.http_port, to_database=database
    )
    target = source.parse_target(options)
    return source.restore(repository, header, target, options=options), target


# ---- item 1: MATERIALIZED columns ------------------------------------------------------------------


def test_materialized_columns_come_back_as_stored_and_a_changed_stored_value_is_caught(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(
        f"CREATE TABLE {db}.scores (day Date, k UInt32, v String, m UInt64 MATERIALIZED k * 2, a UInt64 ALIAS k + 1)"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY k"
    )
    client.execute(
        f"INSERT INTO {db}.scores (day, k, v) SELECT toDate('2026-09-01') + number % 60, number, toString(number)"
        " FROM system.numbers LIMIT 1000"
    )
    # The expression changes after the rows were written: the stored values no longer follow it.
    client.execute(f"ALTER TABLE {db}.scores MODIFY COLUMN m UInt64 MATERIALIZED k * 100")
    http(clickhouse_server, f"INSERT INTO {db}.scores (day, k, v) VALUES ('2026-10-30', 5000, 'new')")
    source_values = client.execute(f"SELECT k, m, a FROM {db}.scores ORDER BY k")
    assert source_values[:2] == [(0, 0, 1), (1, 2, 2)] and source_values[-1] == (5000, 500000, 5001)

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = settings_for(clickhouse_server, db)
    source = ClickHouseSource(SOURCE, settings)
    try:
        result = run_backup(repository, SOURCE, settings)
        restored, target = restore(source, repository, result.header, clickhouse_server, copy)

        assert restored.figures["verification"]["verdict"] == "match"
        assert client.execute(f"SELECT k, m, a FROM {copy}.scores ORDER BY k") == source_values
        [printed] = [table for table in result.header.fingerprint["tables"] if table["table"] == "scores"]
        assert ["m", "UInt64"] in printed["columns"] and ["a", "UInt64"] not in printed["columns"]

        # Tamper: one row's stored m changes, nothing else (same rows, same count, same other columns).
        client.execute(f"ALTER TABLE {copy}.scores DROP PARTITION 202609")
        http(
            clickhouse_server,
            f"INSERT INTO {copy}.scores (day, k, v, m) SELECT day, k, v, if(k = 7, m + 1, m) FROM {db}.scores"
            " WHERE toYYYYMM(day) = 202609",
            insert_allow_materialized_columns="1",
        )
        assert client.execute(f"SELECT count(), sum(k) FROM {copy}.scores") == client.execute(
            f"SELECT count(), sum(k) FROM {db}.scores"
        )

        verification = source.verify(result.header, target)

        assert verification.verdict is Verdict.MISMATCH
        assert verification.differences == [f"{db}.scores partition 202609: count 510 equal, hash differs"]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")
        repository.close()
        client.disconnect()


# ---- item 2: exports cut short by a user profile --------------------------------------------------------


def _add_limited_users(users_path: Path) -> bytes:
    """Add the LIMITED and LIMITED_READONLY users to the server's users.xml; returns the old text."""
    before = users_path.read_bytes()
    root = ET.fromstring(before)
    profiles, users = root.find("profiles"), root.find("users")
    assert profiles is not None and users is not None
    for name, readonly in ((LIMITED, False), (LIMITED_READONLY, True)):
        profile = ET.SubElement(profiles, name)
        if readonly:
            ET.SubElement(profile, "readonly").text = "1"
        ET.SubElement(profile, "max_result_rows").text = str(RESULT_LIMIT)
        ET.SubElement(profile, "result_overflow_mode").text = "break"
        user = ET.SubElement(users, name)
        ET.SubElement(user, "password").text = ""
        ET.SubElement(ET.SubElement(user, "networks"), "ip").text = "127.0.0.1"
        ET.SubElement(user, "profile").text = name
        ET.SubElement(user, "quota").text = "default"
    users_path.write_bytes(ET.tostring(root, xml_declaration=True, encoding="utf-8"))
    return before


@pytest.fixture(scope="module")
def limited_users(clickhouse_server: ClickHouseProcess) -> Iterator[None]:
    """Two users whose profile caps results at RESULT_LIMIT rows without an error (one readonly),
    added to the running server's users.xml (the server reloads it within seconds)."""
    users_path = clickhouse_server.workdir / "users.xml"
    loaded = users_path.stat().st_mtime
    if LIMITED.encode() not in users_path.read_bytes():
        _add_limited_users(users_path)
    # The server notices a change by the file's time in whole seconds: make sure it moved.
    stamp = max(time.time(), loaded + 2)
    os.utime(users_path, (stamp, stamp))
    deadline = time.monotonic() + 30
    while True:
        try:
            limit = "SELECT value FROM system.settings WHERE name = 'max_result_rows'"
            if http(clickhouse_server, limit, user=LIMITED_READONLY).strip() == str(RESULT_LIMIT).encode():
                break
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the server did not load the limited users from users.xml")
        time.sleep(0.5)
    yield


def _big_table(server: ClickHouseProcess, db: str) -> None:
    client = Client(host=server.host, port=server.tcp_port)
    try:
        client.execute(
            f"CREATE TABLE {db}.wide (day Date, k UInt64, s String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY k"
        )
        client.execute(
            f"INSERT INTO {db}.wide SELECT toDate('2026-09-01'), number, toString(number) FROM system.numbers LIMIT 150000"
        )
    finally:
        client.disconnect()
    http(server, f"INSERT INTO {db}.wide VALUES ('2026-10-01', 1, 'small')")


def test_a_profile_that_cuts_results_short_fails_the_backup_naming_the_partition(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path, limited_users: None
) -> None:
    db = clickhouse_database
    _big_table(clickhouse_server, db)
    short = http(clickhouse_server, f"SELECT k FROM {db}.wide WHERE toYYYYMM(day) = 202609", user=LIMITED_READONLY)
    assert 0 < len(short.splitlines()) < 150000, "the profile really cuts results short, without an error"

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    try:
        settings = settings_for(clickhouse_server, db, user=LIMITED_READONLY)
        with pytest.raises(SourceError) as raised:
            run_backup(repository, SOURCE, settings)
        message = str(raised.value)
        assert f"{db}.wide partition 202609" in message and "holds 150000" in message, message
        assert "nothing was committed" in message
        assert repository.snapshot_ids(SOURCE) == []
    finally:
        repository.close()


def test_a_profile_that_cuts_a_batch_of_small_partitions_short_fails_the_backup(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path, limited_users: None
) -> None:
    """200 partitions of 500 rows are exported in batches of 100 partitions (50,000 rows, more than the
    profile's 32,768): the partitions the cut stream leaves out, or leaves short, fail the backup."""
    db = clickhouse_database
    http(clickhouse_server, f"CREATE TABLE {db}.many (p UInt16, k UInt64) ENGINE = MergeTree PARTITION BY p ORDER BY k")
    http(clickhouse_server, f"INSERT INTO {db}.many SELECT number % 200, number FROM system.numbers LIMIT 100000")

    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    try:
        settings = settings_for(clickhouse_server, db, user=LIMITED_READONLY)
        with pytest.raises(SourceError) as raised:
            run_backup(repository, SOURCE, settings)
        message = str(raised.value)
        assert f"{db}.many partition " in message and "but the partition holds 500" in message, message
        assert "nothing was committed" in message
        assert repository.snapshot_ids(SOURCE) == []
    finally:
        repository.close()


@pytest.mark.parametrize("user", [LIMITED, "default"])
def test_a_user_that_may_lift_its_limits_or_has_none_backs_up_every_row(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path, limited_users: None, user: str
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    _big_table(clickhouse_server, db)
    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    settings = settings_for(clickhouse_server, db, user=user)
    source = ClickHouseSource(SOURCE, settings)
    try:
        result = run_backup(repository, SOURCE, settings)
        stored = {
            entry.meta["partition"]: entry.meta["stored_rows"]
            for entry in repository.entries(result.header)
            if entry.meta.get("type") == "data"
        }
        assert stored == {"202609": 150000, "202610": 1}
        assert result.figures["rows"] == 150001 and result.figures["uncounted"] == 0
        restored, _ = restore(source, repository, result.header, clickhouse_server, copy)
        assert restored.figures["verification"]["verdict"] == "match"
        assert http(clickhouse_server, f"SELECT count() FROM {copy}.wide").strip() == b"150001"
    finally:
        http(clickhouse_server, f"DROP DATABASE IF EXISTS {copy}")
        repository.close()


# ---- item 5: a copy found wrong inside the restore is a FAIL -------------------------------------------


def _policy(root: Path, server: ClickHouseProcess, database: str) -> Path:
    ports = {"port": server.tcp_port, "http_port": server.http_port}
    policy = PolicyBuilder(root / "repo", state=root / "state.db")
    policy.source(SOURCE, "clickhouse", host="127.0.0.1", **ports, databases=[database])
    policy.scratch("local", local={"workdir": root / "scratch", "clickhouse": {"host": "127.0.0.1", **ports}})
    policy.drill("nightly", sources=[SOURCE], objectives={"rto": "30m", "rpo": "1h"})
    return init_repository(policy.write(root / "lifeboat.yaml"))


def lifeboat(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


EVENTS = (  # a table of 1,000 rows in one partition, 202609
    "CREATE TABLE {db}.events (day Date, k UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY k",
    "INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 40, number FROM numbers(1000)",
)


def _backed_up(
    server: ClickHouseProcess,
    db: str,
    tmp_path: Path,
    tamper: Callable[[Repository, str], object],
    statements: tuple[str, ...] = EVENTS,
) -> Path:
    """``statements`` run in database ``db``, which is then backed up through the CLI, and its snapshot
    rewritten by ``tamper(repository, snapshot id)``. The policy file."""
    for statement in statements:
        http(server, statement.format(db=db))
    config = _policy(tmp_path, server, db)
    backed = lifeboat(config, "backup", "run", "--json")
    assert backed.exit_code == 0, backed.output
    [snapshot] = json.loads(backed.stdout)["snapshots"]
    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"))
    try:
        tamper(repository, snapshot["id"])
    finally:
        repository.close()
    return config


def _restore_into(config: Path, server: ClickHouseProcess, database: str, *options: str) -> Result:
    target = ["--to-host", "127.0.0.1", "--to-port", str(server.tcp_port), "--to-http-port", str(server.http_port)]
    return lifeboat(config, "restore", SOURCE, *target, "--to-database", database, *options)


def _claim_another_hash(repository: Repository, snapshot_id: str, table: str, partition: str) -> None:
    """Rewrite the snapshot's manifest so its fingerprint of one partition no longer matches the
    data it holds: every restore then loads good bytes that the in-restore check must find wrong."""
    header = repository.read_header(snapshot_id)
    fingerprint = json.loads(json.dumps(header.fingerprint))
    [doc] = [doc for doc in fingerprint["tables"] if doc["table"] == table]
    rows, digest = doc["partitions"][partition]
    doc["partitions"][partition] = [rows, (digest + 1) % HASH_MODULUS]
    rewrite_manifest(repository, replace(header, fingerprint=fingerprint))


def test_a_copy_the_restore_finds_wrong_is_a_fail_not_an_error(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    config = _backed_up(
        clickhouse_server,
        db,
        tmp_path,
        lambda repository, snapshot: _claim_another_hash(repository, snapshot, "events", "202609"),
    )
    restored = _restore_into(config, clickhouse_server, copy)
    try:
        assert restored.exit_code == 1, restored.output
        assert f"{db}.events partition 202609: count" in restored.stderr and "hash differs" in restored.stderr

        drilled = lifeboat(config, "drill", "run", "nightly", "--json", "--no-email")
        report = json.loads(drilled.stdout)
        [run] = report["sources"]
        steps = {step["name"]: (step["verdict"], step["message"]) for step in run["steps"]}
        assert steps["restore"][0] == "FAIL", steps
        assert "differs from the snapshot" in steps["restore"][1] and "partition 202609" in steps["restore"][1]
        assert (report["verdict"], run["verdict"], drilled.exit_code) == ("FAIL", "FAIL", 1)
    finally:
        http(clickhouse_server, f"DROP DATABASE IF EXISTS {copy}")


def _record_another_digest(repository: Repository, snapshot_id: str) -> None:
    """Rewrite the snapshot's entries so that one partition's recorded SHA-256 is not that of its
    bytes (each chunk still whole): only the load's check of the whole entry can tell."""
    header = repository.read_header(snapshot_id)
    entries = list(repository.entries(header))
    [victim] = [entry for entry in entries if entry.meta.get("partition") == "202609"]
    wrong = replace(victim, sha256=hashlib.sha256(victim.sha256.encode()).hexdigest())
    lines = b"".join((wrong if entry is victim else entry).to_line() for entry in entries)
    stats, sink = WriteStats(), repository.new_sink()
    stored = repository.write_stream(io.BytesIO(lines), stats, sink)
    repository.seal(sink, stats)
    rewrite_manifest(repository, replace(header, entries_chunks=stored.chunks))


def test_a_partition_whose_bytes_are_not_the_recorded_ones_fails_the_restore(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    config = _backed_up(clickhouse_server, db, tmp_path, _record_another_digest)
    try:
        restored = _restore_into(config, clickhouse_server, copy)
        assert restored.exit_code == 1, restored.output
        assert f"{db}.events partition 202609: restored bytes do not match the snapshot's SHA-256" in restored.stderr
        assert "Traceback" not in restored.stderr
    finally:
        http(clickhouse_server, f"DROP DATABASE IF EXISTS {copy}")


def _forget_definitions(repository: Repository, snapshot_id: str) -> None:
    """Rewrite the snapshot's manifest as an older Lifeboat wrote it: no recorded table definitions."""
    header = repository.read_header(snapshot_id)
    fingerprint = {key: value for key, value in header.fingerprint.items() if key != "definitions"}
    rewrite_manifest(repository, replace(header, fingerprint=fingerprint))


def test_a_snapshot_without_recorded_definitions_restores_but_is_never_called_verified(
    clickhouse_server: ClickHouseProcess, clickhouse_database: str, tmp_path: Path
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_old"
    table = (
        "CREATE TABLE {db}.events (day Date, k UInt64) ENGINE = MergeTree ORDER BY k",
        "INSERT INTO {db}.events SELECT toDate('2026-09-01'), number FROM numbers(100)",
    )
    config = _backed_up(clickhouse_server, db, tmp_path, _forget_definitions, table)
    try:
        restored = _restore_into(config, clickhouse_server, copy, "--json")
        assert restored.exit_code == 3, restored.output  # written, not proven
        document = json.loads(restored.stdout)
        assert document["verification"]["verdict"] == "unverified"
        assert any(line.startswith("NOT VERIFIED: ") and "records no table definitions" in line for line in document["plan"])
        assert http(clickhouse_server, f"SELECT count() FROM {copy}.events").strip() == b"100"

        drilled = lifeboat(config, "drill", "run", "nightly", "--json", "--no-email")
        [run] = json.loads(drilled.stdout)["sources"]
        steps = {step["name"]: step["verdict"] for step in run["steps"]}
        assert (steps["restore"], steps["verify"], drilled.exit_code) == ("PASS", "ERROR", 3)
    finally:
        http(clickhouse_server, f"DROP DATABASE IF EXISTS {copy}")
