"""Real servers for the integration tests, one per session, all on free 127.0.0.1 ports.

Every fixture registers its server's log; when a test fails, the last lines of every started
server's log are attached to its report. A missing binary or module skips the tests that need it
(fails them when CI=true).
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import rgw
from helpers import (  # tests/ is on sys.path: pytest puts a rootdir conftest's directory there
    CapturedLog,
    ServerLogs,
    SmtpSink,
    require_binaries,
    require_module,
)
from pluggy import Result

from backup.execute import free_port
from backup.servers import ClickHouseProcess, EtcdProcess, start_clickhouse, start_etcd

SERVER_LOGS = pytest.StashKey[ServerLogs]()
LOG_TAIL_LINES = 40


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SERVER_LOGS] = ServerLogs()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    """Attach the tail of every started server's log to the report of a failed test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, text in item.config.stash[SERVER_LOGS].tails(LOG_TAIL_LINES):
            report.sections.append((f"{name} log (last {LOG_TAIL_LINES} lines)", text))


@pytest.fixture(scope="session")
def server_logs(pytestconfig: pytest.Config) -> ServerLogs:
    """The registry of server logs; register servers a test starts itself so failures show their logs."""
    return pytestconfig.stash[SERVER_LOGS]


# --- etcd and ClickHouse: real server processes ------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory, server_logs: ServerLogs) -> Iterator[EtcdProcess]:
    """A single-member etcd 3.4 (``.endpoint``, ``.data_dir``, ``.process``); etcdctl is on PATH too."""
    require_binaries("etcd", "etcdctl")
    with start_etcd(tmp_path_factory.mktemp("etcd") / "data") as etcd:
        server_logs.register("etcd", etcd.log_tail)
        yield etcd


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory, server_logs: ServerLogs) -> Iterator[ClickHouseProcess]:
    """A ClickHouse 18.16 server (``.host``, ``.tcp_port``, ``.http_port``, ``.http_url``, ``.process``)."""
    require_binaries("clickhouse-server")
    with start_clickhouse(tmp_path_factory.mktemp("clickhouse")) as clickhouse:
        server_logs.register("clickhouse-server", clickhouse.log_tail)
        yield clickhouse


@pytest.fixture
def clickhouse_database(clickhouse_server: ClickHouseProcess) -> Iterator[str]:
    """A fresh, empty database on ``clickhouse_server``, dropped after the test; yields its name."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    _clickhouse_http(clickhouse_server, f"CREATE DATABASE {name}")
    yield name
    _clickhouse_http(clickhouse_server, f"DROP DATABASE IF EXISTS {name}")


def _clickhouse_http(clickhouse: ClickHouseProcess, statement: str) -> bytes:
    request = urllib.request.Request(clickhouse.http_url, data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
        return body


# --- S3: moto's server in a thread -------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where the test S3 server listens and the credentials it accepts (moto accepts any)."""

    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    # One boto3 session, so that each client() does not parse the service model again (~60 ms).
    _boto: boto3.session.Session = field(default_factory=boto3.session.Session, init=False, repr=False, compare=False)

    def client(self) -> Any:
        """A new boto3 S3 client for this endpoint; credentials are passed explicitly, not via os.environ.

        Create clients from one thread at a time (boto3 sessions are not thread-safe); a client
        itself may be shared by threads.
        """
        return self._boto.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables for a subprocess (``backup.execute.run(..., env=s3.env())``)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }


S3_SERVERS = ("moto", "rgw")
"""The S3 servers a test can run on: ``@on_both_s3_servers`` (helpers.py) runs it on each."""


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Endpoint:
    """The test's S3 server: moto, unless the test is parametrised over ``S3_SERVERS`` (indirectly)."""
    name = getattr(request, "param", "moto")
    if name not in S3_SERVERS:
        raise ValueError(f"unknown S3 server {name!r}: one of {', '.join(S3_SERVERS)}")
    endpoint: S3Endpoint = request.getfixturevalue(f"{name}_server")
    return endpoint


@pytest.fixture(scope="session")
def rgw_server(server_logs: ServerLogs) -> Iterator[S3Endpoint]:
    """Ceph's RADOS Gateway (single-node Ceph on loopback, memstore OSD), started once per session (~15-30 s).

    Its user has the keys the tests give moto ("testing"/"testing"). Teardown stops every daemon
    (SIGKILL after a timeout) and removes the cluster's temp dir.
    """
    require_binaries(*rgw.BINARIES, hint=rgw.INSTALL_HINT)
    with rgw.start_rgw() as cluster:
        # radosgw's own logs: the mon's, mgr's and OSD's are noisy and rarely the story
        server_logs.register("radosgw", lambda lines: cluster.log_tail(lines, only=("radosgw", "client.admin")))
        yield S3Endpoint(
            endpoint_url=cluster.endpoint_url,
            access_key_id=cluster.access_key_id,
            secret_access_key=cluster.secret_access_key,
        )


@pytest.fixture(scope="session")
def moto_server(server_logs: ServerLogs) -> Iterator[S3Endpoint]:
    """moto's S3 API on a free loopback port, in-process (buckets are shared by the whole session)."""
    from moto.server import ThreadedMotoServer

    log = CapturedLog("werkzeug").attach()
    # Port 0: the kernel picks the port at bind time, so it cannot clash.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = S3Endpoint(endpoint_url=f"http://{host}:{port}")
        endpoint.client().list_buckets()  # ready: it answers S3 requests
        server_logs.register("moto S3", log.tail)
        yield endpoint
    finally:
        server.stop()
        log.detach()


@pytest.fixture
def s3_bucket(s3_server: S3Endpoint) -> str:
    """A new, empty bucket on ``s3_server`` with a unique name; yields the name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


# --- SMTP: aiosmtpd in a thread ------------------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_server(server_logs: ServerLogs) -> Iterator[SmtpSink]:
    """An SMTP sink (``.host``, ``.port``, ``.messages``, ``.wait_for(count, timeout)``, ``.clear()``)."""
    from aiosmtpd.controller import Controller

    log = CapturedLog("mail.log").attach()
    sink = SmtpSink(host="127.0.0.1")
    controller = _start_smtp_controller(Controller, sink)
    server_logs.register("aiosmtpd", log.tail)
    try:
        yield sink
    finally:
        controller.stop()
        log.detach()


def _start_smtp_controller(controller_class: Any, sink: SmtpSink, attempts: int = 3) -> Any:
    """Start aiosmtpd on a free port (it cannot bind port 0); retry if the port got taken meanwhile."""
    for attempt in range(attempts):
        sink.port = free_port()
        controller = controller_class(sink, hostname=sink.host, port=sink.port)
        try:
            controller.start()  # returns once the server has answered a test connection
        except OSError:
            if attempt == attempts - 1:
                raise
            continue
        return controller
    raise AssertionError("unreachable")


@pytest.fixture
def smtp_inbox(smtp_server: SmtpSink) -> SmtpSink:
    """The session's SMTP sink, emptied before the test."""
    smtp_server.clear()
    return smtp_server


# --- chdb: modern ClickHouse in-process ----------------------------------------------------------


@dataclass(frozen=True)
class ChdbSession:
    """An open chdb session whose config allows BACKUP/RESTORE to ``backup_dir``.

    ``File('name')`` resolves relative names under ``backup_dir``; ``Disk(disk_name, 'name')``
    writes to the same directory.
    """

    session: Any
    backup_dir: Path
    data_dir: Path
    config_path: Path
    disk_name: str = "backups"

    def query(self, sql: str, fmt: str = "CSV") -> str:
        """Run ``sql`` and return its output as text in format ``fmt``."""
        return str(self.session.query(sql, fmt))


CHDB_CONFIG = """<clickhouse>
    <storage_configuration>
        <disks>
            <{disk}><type>local</type><path>{backup_dir}/</path></{disk}>
        </disks>
    </storage_configuration>
    <backups>
        <allowed_disk>{disk}</allowed_disk>
        <allowed_path>{backup_dir}/</allowed_path>
    </backups>
</clickhouse>
"""


@pytest.fixture(scope="session")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbSession]:
    """A chdb session on a fresh data dir, BACKUP/RESTORE enabled.

    chdb allows one data path per process: while this session is open, no other chdb session
    with a different path can be opened in the test process.
    """
    chdb_session_module = require_module("chdb.session")
    base = tmp_path_factory.mktemp("chdb")
    backup_dir, data_dir, config_path = base / "backups", base / "data", base / "config.xml"
    backup_dir.mkdir()
    config_path.write_text(CHDB_CONFIG.format(disk="backups", backup_dir=backup_dir))
    session = chdb_session_module.Session(f"file:{data_dir}?config-file={config_path}")
    try:
        yield ChdbSession(session, backup_dir, data_dir, config_path)
    finally:
        session.close()
