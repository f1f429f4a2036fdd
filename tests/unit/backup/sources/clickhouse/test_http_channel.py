"""A ClickHouse server that dies while it answers (a drill's kill-target, an OOM kill) leaves a
response cut short: the load or export fails with ClickHouseError naming the server, never with
http.client's own IncompleteRead escaping to the caller."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from backup.sources.clickhouse.client import ClickHouseError, Endpoint, HttpChannel

CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CUT_SHORT = {
    "headers only, chunked": CHUNKED_200,
    "in a chunk": CHUNKED_200 + b"10\r\nOk.\n",
    "before its length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nOk.\n",
    "an error, chunked": b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n40\r\nCode: 241",
}


class DyingServer:
    """Reads one whole request, answers it with ``response`` and closes the connection."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            request = b""
            while not (request.endswith(b"\r\n0\r\n\r\n") or b"SELECT" in request):
                data = connection.recv(65536)
                if not data:
                    return
                request += data
            connection.sendall(self.response)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture(params=list(CUT_SHORT), ids=list(CUT_SHORT))
def dying(request: pytest.FixtureRequest) -> Iterator[HttpChannel]:
    server = DyingServer(CUT_SHORT[request.param])
    yield HttpChannel(Endpoint("127.0.0.1", 9000, server.port, timeout=10))
    server.close()


def test_a_load_answered_short_fails_naming_the_server(dying: HttpChannel) -> None:
    with pytest.raises(ClickHouseError, match=f"127.0.0.1:{dying.endpoint.http_port} during the load of db.t"):
        dying.insert("INSERT INTO db.t FORMAT Native", [b"x" * 1000, b"y" * 10], what="load of db.t")


def test_an_export_answered_short_fails_naming_the_server(dying: HttpChannel) -> None:
    with pytest.raises(ClickHouseError, match=f"127.0.0.1:{dying.endpoint.http_port} during the export of db.t"):
        with dying.export("SELECT 1 FORMAT Native", what="export of db.t") as stream:
            while stream.read(1 << 16):
                pass
