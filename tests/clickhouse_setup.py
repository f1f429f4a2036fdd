"""Setup shared by the ClickHouse tests of many partitions and of many tables (not fixtures): a
database of the test server backed up into a local repository of its own, and restored into other
databases of the same server, which are dropped at the end."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from clickhouse_driver import Client

from backup.repository import open_repository
from backup.repository.repository import Repository
from backup.servers import ClickHouseProcess
from backup.sources.base import RestoreOptions
from backup.sources.clickhouse.source import ClickHouseSource
from policies.model import ClickHouseSettings
from policies.model import Repository as RepositorySettings

SOURCE = "features"


def http(server: ClickHouseProcess, statement: str, **settings: str) -> bytes:
    """Run ``statement`` over HTTP (with query ``settings``); its response body."""
    query = "&".join(f"{name}={value}" for name, value in settings.items())
    request = urllib.request.Request(f"{server.http_url}/?{query}", data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        return body


def data_entries(repository: Repository, header: Any) -> dict[str, Any]:
    """The data entries of snapshot ``header`` by name."""
    return {entry.name: entry for entry in repository.entries(header) if entry.meta.get("type") == "data"}


@dataclass
class ClickHouseCase:
    """``database`` on ``server``, its source SOURCE backed up into ``repository`` with ``settings``."""

    server: ClickHouseProcess
    database: str
    client: Client
    repository: Repository
    settings: ClickHouseSettings
    restored: list[str] = field(default_factory=list)  # databases restored into, dropped on close

    @classmethod
    @contextmanager
    def opened(cls, server: ClickHouseProcess, database: str, tmp_path: Path, *, parallel: int) -> Iterator[Self]:
        """A case backing up ``database`` (with ``parallel`` exports) into a new repository under
        ``tmp_path``; on exit the databases it restored into are dropped, repository and client closed."""
        client = Client(host=server.host, port=server.tcp_port)
        repository = open_repository(RepositorySettings(url=f"file://{tmp_path / 'repo'}"), create=True)
        settings = ClickHouseSettings.model_validate(
            {
                "kind": "clickhouse",
                "host": server.host,
                "port": server.tcp_port,
                "http_port": server.http_port,
                "databases": [database],
                "parallel": parallel,
            }
        )
        case = cls(server, database, client, repository, settings)
        try:
            yield case
        finally:
            for copy in case.restored:
                client.execute(f"DROP DATABASE IF EXISTS {copy}")
            repository.close()
            client.disconnect()

    @property
    def source(self) -> ClickHouseSource:
        return ClickHouseSource(SOURCE, self.settings)

    def restore(self, header: Any, database: str) -> tuple[Any, Any]:
        """Restore snapshot ``header`` into ``database`` of the same server; the result and the target."""
        self.restored.append(database)
        options = RestoreOptions.of(
            to_host=self.server.host, to_port=self.server.tcp_port, to_http_port=self.server.http_port, to_database=database
        )
        target = self.source.parse_target(options)
        return self.source.restore(self.repository, header, target, options=options), target


class OnFirstProgress:
    """A backup's ``progress`` callback that runs ``statement`` once, at the first progress report
    (from whichever export thread reports first); ``ran`` says whether it did."""

    def __init__(self, client: Client, statement: str) -> None:
        self._client, self._statement = client, statement
        self._lock = threading.Lock()
        self.ran = False

    def __call__(self, _: int) -> None:
        with self._lock:
            if not self.ran:
                self._client.execute(self._statement)
                self.ran = True
