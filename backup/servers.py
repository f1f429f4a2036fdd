"""Local server processes that Lifeboat starts itself.

A scratch etcd proves that a snapshot restores into a working member; the demo (and the
integration tests) run etcd and ClickHouse next to Lifeboat. Every server binds to 127.0.0.1 on
freshly picked ports, never on the default ones, and counts as started only once it answers its
health check. Starting raises :class:`~policies.errors.SourceError` (with the server's log tail)
if it does not get ready; the process is killed first so nothing is left behind.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from backup.execute import CommandError, ManagedProcess, free_ports, start, tail_of_file
from policies.errors import SourceError

HOST = "127.0.0.1"
START_ATTEMPTS = 3
"""A freshly picked port can be taken by someone else before the server binds it: retry this often."""

POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 40
PROBE_TIMEOUT = 1.0
ETCD_STOP_TIMEOUT = 10.0
CLICKHOUSE_STOP_TIMEOUT = 15.0

_PORT_TAKEN_MARKERS = ("address already in use",)

_Server = TypeVar("_Server")


class _PortTakenError(SourceError):
    """The server exited at start because one of its ports was taken; worth a retry."""


@dataclass
class EtcdProcess:
    """A running single-member etcd; a context manager that stops it."""

    endpoint: str
    """Client URL, e.g. ``http://127.0.0.1:41234``."""
    data_dir: Path
    process: ManagedProcess
    peer_url: str
    metrics_url: str

    def stop(self, timeout: float = ETCD_STOP_TIMEOUT) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
        self.process.stop(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of etcd's log."""
        return self.process.log_tail(lines)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class ClickHouseProcess:
    """A running ClickHouse server with its own config, data and logs under ``workdir``."""

    host: str
    tcp_port: int
    http_port: int
    workdir: Path
    process: ManagedProcess
    log_paths: tuple[Path, ...]
    """The server's stdout/stderr file, then its own log file and error log."""

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP interface, e.g. ``http://127.0.0.1:41235/``."""
        return f"http://{self.host}:{self.http_port}/"

    def stop(self, timeout: float = CLICKHOUSE_STOP_TIMEOUT) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
        self.process.stop(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's stdout/stderr and of its own log file."""
        return _joined_tails(self.log_paths[:2], lines)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_etcd(
    data_dir: Path,
    *,
    etcd_bin: str = "etcd",
    name: str = "n1",
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
) -> EtcdProcess:
    """Start a single-member etcd on fresh loopback ports and wait until ``/health`` says true.

    ``data_dir`` may be missing, empty, or a data dir made by ``etcdctl snapshot restore`` (the
    member it holds then keeps its restored peer URL; a lone member never dials it).
    The log goes to ``log_path``, by default ``<data_dir>.log`` next to the data dir (etcd warns
    about foreign files inside it). Raises :class:`SourceError` if etcd cannot be started or is not
    healthy within ``ready_timeout`` seconds.
    """
    log_path = log_path or data_dir.with_name(f"{data_dir.name}.log")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return _with_port_retries(
        lambda: _launch_etcd(data_dir, etcd_bin=etcd_bin, name=name, log_path=log_path, timeout=ready_timeout)
    )


def _launch_etcd(data_dir: Path, *, etcd_bin: str, name: str, log_path: Path, timeout: float) -> EtcdProcess:
    client_port, peer_port, metrics_port = free_ports(3)
    endpoint = f"http://{HOST}:{client_port}"
    peer_url = f"http://{HOST}:{peer_port}"
    metrics_url = f"http://{HOST}:{metrics_port}"
    argv = [
        etcd_bin,
        *("--name", name),
        *("--data-dir", str(data_dir)),
        *("--logger", "zap"),
        *("--listen-client-urls", endpoint),
        *("--advertise-client-urls", endpoint),
        *("--listen-peer-urls", peer_url),
        *("--initial-advertise-peer-urls", peer_url),
        *("--initial-cluster", f"{name}={peer_url}"),
        *("--initial-cluster-state", "new"),
        *("--listen-metrics-urls", metrics_url),
    ]
    process = _start_server(argv, log_path=log_path)
    _wait_until_ready(
        process,
        probe=lambda: _etcd_healthy(endpoint),
        timeout=timeout,
        what=f"etcd at {endpoint}",
        log_tail=process.log_tail,
    )
    return EtcdProcess(endpoint, data_dir, process, peer_url, metrics_url)


def _etcd_healthy(endpoint: str) -> bool:
    body = _http_get(f"{endpoint}/health")
    if body is None:
        return False
    try:
        return bool(json.loads(body).get("health") == "true")
    except ValueError:
        return False


def start_clickhouse(
    workdir: Path,
    *,
    server_bin: str = "clickhouse-server",
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
) -> ClickHouseProcess:
    """Start a ClickHouse server whose config, data and logs all live under ``workdir``.

    Writes ``config.xml`` and ``users.xml`` (passwordless ``default`` user, 127.0.0.1 only) into
    ``workdir``, picks free tcp/http/interserver ports and waits until ``/ping`` answers ``Ok.``.
    The server's stdout/stderr go to ``log_path`` (default ``workdir/clickhouse-server.stdout.log``);
    its own logs to ``workdir/clickhouse-server.log`` and ``.err.log``. Raises :class:`SourceError`
    if the server cannot be started or does not answer within ``ready_timeout`` seconds.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stdout_log = log_path or workdir / "clickhouse-server.stdout.log"
    return _with_port_retries(
        lambda: _launch_clickhouse(workdir, server_bin=server_bin, stdout_log=stdout_log, timeout=ready_timeout)
    )


def _launch_clickhouse(workdir: Path, *, server_bin: str, stdout_log: Path, timeout: float) -> ClickHouseProcess:
    tcp_port, http_port, interserver_port = free_ports(3)
    server_log, error_log = workdir / "clickhouse-server.log", workdir / "clickhouse-server.err.log"
    config_path = workdir / "config.xml"
    users_path = workdir / "users.xml"
    _write_xml(users_path, _clickhouse_users())
    config = _clickhouse_config(
        workdir,
        ports={"tcp_port": tcp_port, "http_port": http_port, "interserver_http_port": interserver_port},
        users_path=users_path,
        logs=(server_log, error_log),
    )
    _write_xml(config_path, config)
    process = _start_server([server_bin, f"--config-file={config_path}"], log_path=stdout_log)
    log_paths = (stdout_log, server_log, error_log)
    _wait_until_ready(
        process,
        probe=lambda: _http_get(f"http://{HOST}:{http_port}/ping") == b"Ok.\n",
        timeout=timeout,
        what=f"clickhouse-server at {HOST}:{http_port}",
        log_tail=lambda lines: _joined_tails(log_paths[:2], lines),
    )
    return ClickHouseProcess(HOST, tcp_port, http_port, workdir, process, log_paths)


def _clickhouse_config(workdir: Path, *, ports: Mapping[str, int], users_path: Path, logs: tuple[Path, Path]) -> ET.Element:
    root = ET.Element("yandex")
    logger = _add(root, "logger")
    _add(logger, "level", "information")
    _add(logger, "log", str(logs[0]))
    _add(logger, "errorlog", str(logs[1]))
    _add(logger, "size", "50M")
    _add(logger, "count", "1")
    _add(root, "listen_host", HOST)
    for tag, port in ports.items():
        _add(root, tag, str(port))
    # ClickHouse wants directory paths with a trailing slash.
    for tag, sub in [("path", "data"), ("tmp_path", "tmp"), ("user_files_path", "user_files")]:
        _add(root, tag, f"{workdir / sub}/")
    _add(root, "format_schema_path", f"{workdir / 'format_schemas'}/")
    _add(root, "users_config", str(users_path))
    _add(root, "default_profile", "default")
    _add(root, "default_database", "default")
    # 18.16 refuses to start without mark_cache_size; the packaged 5 GiB is far too much here.
    _add(root, "mark_cache_size", str(256 * 1024 * 1024))
    return root


def _clickhouse_users() -> ET.Element:
    root = ET.Element("yandex")
    _add(_add(root, "profiles"), "default")
    default_user = _add(_add(root, "users"), "default")
    _add(default_user, "password", "")
    _add(_add(default_user, "networks"), "ip", HOST)
    _add(default_user, "profile", "default")
    _add(default_user, "quota", "default")
    _add(_add(root, "quotas"), "default")
    return root


def _add(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = text
    return child


def _write_xml(path: Path, root: ET.Element) -> None:
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _start_server(argv: list[str], *, log_path: Path) -> ManagedProcess:
    try:
        return start(argv, log_path=log_path)
    except CommandError as exc:
        raise SourceError(str(exc)) from exc


def _wait_until_ready(
    process: ManagedProcess,
    *,
    probe: Callable[[], bool],
    timeout: float,
    what: str,
    log_tail: Callable[[int], str],
) -> None:
    """Poll ``probe`` until it is true; if the server dies, times out or we are interrupted, kill it.

    Raises :class:`SourceError` (``_PortTakenError`` when its log says a port was taken).
    """
    try:
        _poll_until_ready(process, probe=probe, timeout=timeout, what=what, log_tail=log_tail)
    except BaseException:
        process.kill()
        raise


def _poll_until_ready(
    process: ManagedProcess,
    *,
    probe: Callable[[], bool],
    timeout: float,
    what: str,
    log_tail: Callable[[int], str],
) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if not process.alive():
            tail = log_tail(LOG_TAIL_LINES) or "(empty)"
            error = _PortTakenError if _mentions_port_taken(tail) else SourceError
            raise error(f"{what} exited with code {process.returncode} before it was ready; log tail:\n{tail}")
        if time.monotonic() > deadline:
            raise SourceError(f"{what} was not ready within {timeout:g}s; log tail:\n{log_tail(LOG_TAIL_LINES)}")
        time.sleep(POLL_INTERVAL)


def _mentions_port_taken(log_text: str) -> bool:
    lowered = log_text.lower()
    return any(marker in lowered for marker in _PORT_TAKEN_MARKERS)


def _with_port_retries(launch: Callable[[], _Server]) -> _Server:
    for _attempt in range(START_ATTEMPTS - 1):
        try:
            return launch()
        except _PortTakenError:
            continue
    return launch()


def _http_get(url: str) -> bytes | None:
    """GET ``url``; the body on HTTP 200, ``None`` while the server is not answering (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            body: bytes = response.read()
            return body
    except (OSError, http.client.HTTPException):
        return None


def _joined_tails(paths: tuple[Path, ...], lines: int) -> str:
    parts = [f"--- {path.name}\n{text}" for path in paths if (text := tail_of_file(path, lines))]
    return "\n".join(parts)
