"""chdb (modern ClickHouse in-process): BACKUP then RESTORE AS gives an equal table."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.integration

ROWS = 100_000


def create_filled_table(chdb, database: str) -> tuple[int, int]:
    """Create ``database.t`` (monthly partitions) with ROWS rows; return its fingerprint."""
    chdb.query(f"CREATE DATABASE {database}")
    chdb.query(
        f"CREATE TABLE {database}.t (day Date, id UInt64, city String, amount Float64)"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, id)"
    )
    chdb.query(
        f"INSERT INTO {database}.t SELECT toDate('2026-01-01') + number % 90, number,"
        f" concat('city-', toString(number % 97)), number * 0.25 FROM numbers({ROWS})"
    )
    return fingerprint(chdb, f"{database}.t")


def fingerprint(chdb, table: str) -> tuple[int, int]:
    """``count()`` and ``sum(cityHash64(*))`` of ``table``."""
    count, digest = chdb.query(f"SELECT count(), sum(cityHash64(*)) FROM {table}").strip().split(",")
    return int(count), int(digest)


def backup_and_restore(chdb, database: str, destination: str) -> str:
    """BACKUP ``database.t`` to ``destination``, RESTORE it AS ``database.t2``; return both statuses."""
    backed_up = chdb.query(f"BACKUP TABLE {database}.t TO {destination}")
    restored = chdb.query(f"RESTORE TABLE {database}.t AS {database}.t2 FROM {destination}")
    return backed_up + restored


@pytest.mark.parametrize("destination", ["File('{name}')", "Disk('backups', '{name}')"], ids=["file", "disk"])
def test_backup_to_local_files_restores_equal(chdb_session, destination: str) -> None:
    database = f"db_{uuid.uuid4().hex[:8]}"
    original = create_filled_table(chdb_session, database)
    assert original[0] == ROWS

    # A relative File() name lands under the first <backups><allowed_path>, like Disk() does here.
    statuses = backup_and_restore(chdb_session, database, destination.format(name=f"{database}-full"))

    assert "BACKUP_CREATED" in statuses and "RESTORED" in statuses
    assert (chdb_session.backup_dir / f"{database}-full" / ".backup").is_file()
    assert fingerprint(chdb_session, f"{database}.t2") == original


def test_backup_to_s3_restores_equal(chdb_session, s3_server, s3_bucket: str) -> None:
    database = f"db_{uuid.uuid4().hex[:8]}"
    original = create_filled_table(chdb_session, database)
    url = f"{s3_server.endpoint_url}/{s3_bucket}/chdb/{database}"
    destination = f"S3('{url}', '{s3_server.access_key_id}', '{s3_server.secret_access_key}')"

    statuses = backup_and_restore(chdb_session, database, destination)

    assert "BACKUP_CREATED" in statuses and "RESTORED" in statuses
    keys = [obj["Key"] for obj in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"chdb/{database}/.backup" in keys
    assert fingerprint(chdb_session, f"{database}.t2") == original
