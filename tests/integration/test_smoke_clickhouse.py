"""ClickHouse 18.16: a table exported as Native over HTTP imports into another table unchanged."""

from __future__ import annotations

import datetime as dt
import http.client
import urllib.parse
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

from backup.servers import ClickHouseProcess

pytestmark = pytest.mark.integration

ROWS = 100_000
FIRST_DAY = dt.date(2026, 1, 1)
DAYS = 90  # January to March: three monthly partitions
CHUNK = 1 << 20
HTTP_TIMEOUT = 60


def create_events_table(client: Client, table: str) -> None:
    client.execute(
        f"CREATE TABLE {table} (day Date, id UInt64, city String, amount Float64, tags Array(String))"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, id)"
    )


def insert_events(client: Client, table: str) -> None:
    columns = [
        [FIRST_DAY + dt.timedelta(days=i % DAYS) for i in range(ROWS)],
        list(range(ROWS)),
        [f"city-{i % 97}" for i in range(ROWS)],
        [i * 0.25 for i in range(ROWS)],
        [[f"t{i % 3}", f"u{i % 5}"][: i % 3] for i in range(ROWS)],
    ]
    client.execute(f"INSERT INTO {table} VALUES", columns, columnar=True)


def fingerprint(client: Client, table: str) -> tuple[int, int]:
    """``count()`` and ``sum(cityHash64(*))``: equal for equal row multisets, whatever the order."""
    ((count, digest),) = client.execute(f"SELECT count(), sum(cityHash64(*)) FROM {table}")
    return count, digest


def export_native(server: ClickHouseProcess, table: str) -> Iterator[bytes]:
    """Stream ``SELECT * FORMAT Native`` from the HTTP interface, chunk by chunk."""
    connection = http.client.HTTPConnection(server.host, server.http_port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("POST", "/", body=f"SELECT * FROM {table} FORMAT Native".encode())
        response = connection.getresponse()
        if response.status != 200:
            raise AssertionError(f"export failed: {response.status} {response.read()[:500]!r}")
        while chunk := response.read(CHUNK):
            yield chunk
    finally:
        connection.close()


def import_native(server: ClickHouseProcess, table: str, chunks: Iterator[bytes]) -> None:
    """Stream Native data into ``INSERT INTO table FORMAT Native`` (chunked transfer encoding)."""
    connection = http.client.HTTPConnection(server.host, server.http_port, timeout=HTTP_TIMEOUT)
    try:
        query = urllib.parse.quote(f"INSERT INTO {table} FORMAT Native")
        connection.request("POST", f"/?query={query}", body=chunks, encode_chunked=True)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, f"import failed: {response.status} {body[:500]!r}"
    finally:
        connection.close()


def test_native_export_imports_into_an_equal_table(clickhouse_server: ClickHouseProcess, clickhouse_database: str) -> None:
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port, database=clickhouse_database)
    try:
        create_events_table(client, "events")
        insert_events(client, "events")
        ((count, id_sum, partitions),) = client.execute("SELECT count(), sum(id), uniqExact(toYYYYMM(day)) FROM events")
        assert (count, id_sum, partitions) == (ROWS, ROWS * (ROWS - 1) // 2, 3)

        create_events_table(client, "events_copy")
        exported = export_native(clickhouse_server, f"{clickhouse_database}.events")
        import_native(clickhouse_server, f"{clickhouse_database}.events_copy", exported)

        assert fingerprint(client, "events_copy") == fingerprint(client, "events")
        assert fingerprint(client, "events_copy")[0] == ROWS
    finally:
        client.disconnect()
