"""An export's body as the real 18.16 server sends it (chunked, 4 KiB chunks): the bytes http.client
reads, and an error the server appends after it has begun is the export's error, never its end."""

from __future__ import annotations

import http.client

import pytest

from backup.servers import ClickHouseProcess
from backup.sources.clickhouse.client import ClickHouseError, Endpoint, HttpChannel

pytestmark = pytest.mark.integration

ROWS = "SELECT number, toString(number) AS text FROM system.numbers LIMIT 300000 FORMAT RowBinary"


def channel(server: ClickHouseProcess) -> HttpChannel:
    return HttpChannel(Endpoint(server.host, server.tcp_port, server.http_port))


def test_an_export_reads_the_bytes_http_client_reads(clickhouse_server: ClickHouseProcess) -> None:
    connection = http.client.HTTPConnection(clickhouse_server.host, clickhouse_server.http_port, timeout=60)
    try:
        connection.request("POST", "/", body=ROWS.encode())
        response = connection.getresponse()
        assert response.status == 200 and response.chunked
        expected = response.read()
    finally:
        connection.close()
    for size in (1, 4095, 1 << 20):
        with channel(clickhouse_server).export(ROWS, what="the rows") as stream:
            pieces = []
            while data := stream.read(size if size > 1 else 1 << (len(pieces) % 21)):
                pieces.append(data)
        assert b"".join(pieces) == expected


def test_an_error_after_the_export_began_is_its_error(clickhouse_server: ClickHouseProcess) -> None:
    failing = "SELECT throwIf(number = 3000000) FROM system.numbers LIMIT 5000000 FORMAT Native"
    read = 0
    with pytest.raises(ClickHouseError, match="failed while streaming") as raised:
        with channel(clickhouse_server).export(failing, what="the failing export") as stream:
            while data := stream.read(1 << 20):
                read += len(data)
    assert raised.value.code == 395
    assert read > 1 << 20, "the server had sent data before it failed"
