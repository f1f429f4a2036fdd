"""ClickHouse restores that need settings to create their tables, and restores that fail midway
(issue 20, item 3), on the real 18.16 server, which gates LowCardinality behind
``allow_experimental_low_cardinality_type``.

* The settings of the backup session that change what DDL is accepted are recorded in the snapshot
  and sent with every CREATE of the restore; a definition using LowCardinality gets the setting
  even when the backup session did not have it (its profile may differ from the target's).
* A restore that fails midway removes what it created (tables, and the database when it made it),
  never what was there before, and says what happened and what is left.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client
from test_clickhouse_truth import SOURCE, http, settings_for

from backup.jobs import run_backup
from backup.repository import open_repository
from backup.repository.repository import Repository
from backup.servers import ClickHouseProcess
from backup.sources.base import RestoreOptions
from backup.sources.clickhouse.source import ClickHouseSource
from policies.errors import RestoreError
from policies.model import Repository as RepositorySettings

pytestmark = pytest.mark.integration

LOWCARD_USER = "lifeboat_lowcard"  # its profile allows LowCardinality (the source's session)
PLAIN_USER = "lifeboat_plain"  # its profile does not (the target's session)
LOWCARD_SETTING = "allow_experimental_low_cardinality_type"


def _add_users(users_path: Path) -> None:
    root = ET.fromstring(users_path.read_bytes())
    profiles, users = root.find("profiles"), root.find("users")
    assert profiles is not None and users is not None
    for name, allowed in ((LOWCARD_USER, True), (PLAIN_USER, False)):
        profile = ET.SubElement(profiles, name)
        if allowed:
            ET.SubElement(profile, LOWCARD_SETTING).text = "1"
        user = ET.SubElement(users, name)
        ET.SubElement(user, "password").text = ""
        ET.SubElement(ET.SubElement(user, "networks"), "ip").text = "127.0.0.1"
        ET.SubElement(user, "profile").text = name
        ET.SubElement(user, "quota").text = "default"
    users_path.write_bytes(ET.tostring(root, xml_declaration=True, encoding="utf-8"))


@pytest.fixture(scope="module")
def profile_users(clickhouse_server: ClickHouseProcess) -> Iterator[None]:
    """LOWCARD_USER (profile with the setting) and PLAIN_USER (without), added to the running
    server's users.xml (the server reloads it within seconds)."""
    users_path = clickhouse_server.workdir / "users.xml"
    loaded = users_path.stat().st_mtime
    if LOWCARD_USER.encode() not in users_path.read_bytes():
        _add_users(users_path)
    stamp = max(time.time(), loaded + 2)
    os.utime(users_path, (stamp, stamp))
    deadline = time.monotonic() + 30
    query = f"SELECT value FROM system.settings WHERE name = '{LOWCARD_SETTING}'"
    while True:
        try:
            if http(clickhouse_server, query, user=LOWCARD_USER).strip() == b"1":
                assert http(clickhouse_server, query, user=PLAIN_USER).strip() == b"0"
                break
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the server did not load the profile users from users.xml")
        time.sleep(0.5)
    yield


@pytest.fixture
def client(clickhouse_server: ClickHouseProcess) -> Iterator[Client]:
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    yield client
    client.disconnect()


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
    yield repository
    repository.close()


def _tables(client: Client, database: str) -> list[str]:
    return [row[0] for row in client.execute(f"SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name")]


def _database_exists(client: Client, database: str) -> bool:
    return bool(client.execute(f"SELECT count() FROM system.databases WHERE name = '{database}'")[0][0])


def _fill(client: Client, db: str, **settings: Any) -> None:
    """Five data tables, one of them with a LowCardinality column (created with ``settings``)."""
    client.execute(
        f"CREATE TABLE {db}.events (day Date, k UInt32, tag LowCardinality(String)) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(day) ORDER BY k",
        settings=settings,
    )
    client.execute(
        f"INSERT INTO {db}.events SELECT toDate('2026-09-01') + number % 40, number, concat('tag', toString(number % 7))"
        " FROM system.numbers LIMIT 500",
        settings=settings,
    )
    for name in ("a_counts", "b_counts", "c_counts", "d_counts"):
        client.execute(f"CREATE TABLE {db}.{name} (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
        client.execute(f"INSERT INTO {db}.{name} SELECT number, toString(number) FROM system.numbers LIMIT 100")


def _restore(
    server: ClickHouseProcess,
    settings: Any,
    repository: Repository,
    header: Any,
    database: str,
    *,
    user: str = PLAIN_USER,
    http_port: int | None = None,
    yes: bool = False,
) -> Any:
    source = ClickHouseSource(SOURCE, settings)
    options = RestoreOptions.of(
        to_host=server.host,
        to_port=server.tcp_port,
        to_http_port=http_port or server.http_port,
        to_database=database,
        to_user=user,
        to_password="",
        yes=yes,
    )
    return source.restore(repository, header, source.parse_target(options), options=options)


def test_a_low_cardinality_table_restores_as_a_user_whose_profile_does_not_allow_it(
    clickhouse_server: ClickHouseProcess,
    clickhouse_database: str,
    profile_users: None,
    client: Client,
    repository: Repository,
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    source_client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port, user=LOWCARD_USER)
    try:
        _fill(source_client, db)  # the source user's profile allows the type
    finally:
        source_client.disconnect()
    settings = settings_for(clickhouse_server, db, user=LOWCARD_USER)
    try:
        header = run_backup(repository, SOURCE, settings).header
        assert header.meta["ddl_settings"] == {LOWCARD_SETTING: "1"}

        result = _restore(clickhouse_server, settings, repository, header, copy)

        assert result.figures["verification"]["verdict"] == "match", result.figures
        assert _tables(client, copy) == ["a_counts", "b_counts", "c_counts", "d_counts", "events"]
        assert client.execute(f"SELECT type FROM system.columns WHERE database = '{copy}' AND name = 'tag'") == [
            ("LowCardinality(String)",)
        ]
        assert client.execute(f"SELECT count(), uniqExact(tag) FROM {copy}.events") == [(500, 7)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")


def test_a_low_cardinality_table_made_with_a_session_setting_restores_though_nothing_was_recorded(
    clickhouse_server: ClickHouseProcess,
    clickhouse_database: str,
    profile_users: None,
    client: Client,
    repository: Repository,
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    _fill(client, db, **{LOWCARD_SETTING: 1})  # only that session had it: the backup's does not
    settings = settings_for(clickhouse_server, db)
    try:
        header = run_backup(repository, SOURCE, settings).header
        assert header.meta["ddl_settings"] == {}

        result = _restore(clickhouse_server, settings, repository, header, copy)

        assert result.figures["verification"]["verdict"] == "match", result.figures
        assert "events" in _tables(client, copy)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")


def test_a_create_the_target_refuses_leaves_nothing_this_restore_created(
    clickhouse_server: ClickHouseProcess,
    clickhouse_database: str,
    profile_users: None,
    client: Client,
    repository: Repository,
) -> None:
    db, copy, outside = clickhouse_database, f"{clickhouse_database}_copy", f"{clickhouse_database}_outside"
    _fill(client, db, **{LOWCARD_SETTING: 1})
    client.execute(f"CREATE DATABASE {outside}")
    client.execute(f"CREATE TABLE {outside}.lookup (k UInt32) ENGINE = Memory")
    client.execute(f"CREATE VIEW {db}.joined AS SELECT k FROM {outside}.lookup")
    settings = settings_for(clickhouse_server, db)
    try:
        header = run_backup(repository, SOURCE, settings).header
        client.execute(f"DROP DATABASE {outside}")  # the view's CREATE now fails: it reads a table that is gone

        with pytest.raises(RestoreError) as caught:
            _restore(clickhouse_server, settings, repository, header, copy)

        message = str(caught.value)
        assert f"cannot create {copy}.joined" in message and f"Database {outside} doesn't exist" in message
        assert f"removed what this restore created: database {copy} with 5 tables" in message, message
        assert not _database_exists(client, copy)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")
        client.execute(f"DROP DATABASE IF EXISTS {outside}")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_failed_load_into_an_existing_database_removes_only_what_the_restore_created(
    clickhouse_server: ClickHouseProcess,
    clickhouse_database: str,
    profile_users: None,
    client: Client,
    repository: Repository,
) -> None:
    db, copy = clickhouse_database, f"{clickhouse_database}_copy"
    _fill(client, db, **{LOWCARD_SETTING: 1})
    settings = settings_for(clickhouse_server, db)
    client.execute(f"CREATE DATABASE {copy}")
    client.execute(f"CREATE TABLE {copy}.keep (k UInt32) ENGINE = Memory")
    client.execute(f"INSERT INTO {copy}.keep (k) VALUES", [(1,), (2,)])
    client.execute(f"CREATE TABLE {copy}.b_counts (old UInt8) ENGINE = Memory")  # replaced by the restore
    try:
        header = run_backup(repository, SOURCE, settings).header

        with pytest.raises(RestoreError) as caught:  # the native port works, the HTTP port (data) does not
            _restore(clickhouse_server, settings, repository, header, copy, http_port=_closed_port(), yes=True)

        message = str(caught.value)
        assert "cannot reach ClickHouse's HTTP interface" in message, message
        assert "removed what this restore created: 5 tables" in message, message
        assert f"database {copy} was there before and keeps its other tables" in message, message
        assert "b_counts, replaced by this restore, was dropped before it failed" in message, message
        assert _tables(client, copy) == ["keep"]
        assert client.execute(f"SELECT count() FROM {copy}.keep") == [(2,)]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {copy}")
