"""What a user sees on stderr: a progress bar on a terminal (and nothing drawn otherwise), and when a
restore cannot reach its target one clear error, no driver traceback."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from policy_builder import PolicyBuilder

from backup.execute import free_port

pytestmark = pytest.mark.integration


def lifeboat(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lifeboat", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=False)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def backed_up(tmp_path: Path, clickhouse_server: Any) -> Path:
    """A policy with one ClickHouse source, backed up once."""
    config = repository(tmp_path, clickhouse_server)
    assert lifeboat(config, "backup", "run").returncode == 0
    return config


def repository(tmp_path: Path, clickhouse_server: Any) -> Path:
    """A policy with one ClickHouse source and its empty repository."""
    database = f"quiet_{uuid.uuid4().hex[:8]}"
    for statement in (
        f"CREATE DATABASE {database}",
        f"CREATE TABLE {database}.t (k UInt8) ENGINE = MergeTree ORDER BY k",
        f"INSERT INTO {database}.t VALUES (1)",
    ):
        urllib.request.urlopen(urllib.request.Request(clickhouse_server.http_url, data=statement.encode()), timeout=30)
    builder = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    ports = {"port": clickhouse_server.tcp_port, "http_port": clickhouse_server.http_port}
    builder.source("ch", "clickhouse", host=clickhouse_server.host, **ports, databases=[database], strategy="logical")
    config = builder.write(tmp_path / "lifeboat.yaml")
    assert lifeboat(config, "repo", "init").returncode == 0
    return config


def on_a_terminal(config: Path, *args: str) -> tuple[int, str, str]:
    """Run lifeboat with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "lifeboat", "--config", str(config), *args]
    env = {**os.environ, "COLUMNS": "160"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, text=True, env=env) as process:
        os.close(slave)
        shown = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            shown += data
        stdout = process.stdout.read() if process.stdout else ""
        code = process.wait(timeout=120)
    os.close(master)
    return code, stdout, ANSI.sub("", shown.decode(errors="replace")).replace("\r", "\n")


def test_a_restore_on_a_terminal_shows_a_bar_that_ends_at_100_percent_and_the_exact_bytes(
    tmp_path: Path, clickhouse_server: Any
) -> None:
    config = backed_up(tmp_path, clickhouse_server)
    target = ["--to-host", "127.0.0.1", "--to-port", str(clickhouse_server.tcp_port)]
    target += ["--to-http-port", str(clickhouse_server.http_port), "--to-database", f"bar_{uuid.uuid4().hex[:8]}"]
    code, stdout, shown = on_a_terminal(config, "restore", "ch", *target)
    assert code == 0, shown
    bars = [line for line in shown.splitlines() if line.startswith("restore ch")]
    assert bars and "%" in bars[0], shown
    final = re.search(r"restore ch done: (\d+) bytes .* 100% ", bars[-1])
    assert final, bars[-1]
    assert "restored: ch snapshot" in stdout and "Traceback" not in shown
    quiet = lifeboat(config, "restore", "ch", *target[:-1], f"quiet_{uuid.uuid4().hex[:8]}")
    assert quiet.returncode == 0 and "restore ch" not in quiet.stderr and "\r" not in quiet.stderr


def test_a_backup_on_a_terminal_shows_bytes_and_rate(tmp_path: Path, clickhouse_server: Any) -> None:
    config = repository(tmp_path, clickhouse_server)
    code, stdout, shown = on_a_terminal(config, "backup", "run", "--json")
    assert code == 0, shown
    [snapshot] = json.loads(stdout)["snapshots"]
    final = [line for line in shown.splitlines() if line.startswith("backup ch")][-1]
    assert snapshot["bytes_read"] > 0 and f"done: {snapshot['bytes_read']} bytes" in final, final
    assert "/s" in final and "%" not in final, final


def test_a_restore_to_a_closed_port_prints_no_traceback(tmp_path: Path, clickhouse_server: Any) -> None:
    config = backed_up(tmp_path, clickhouse_server)
    closed = str(free_port())
    for log_format in ("console", "json"):
        result = lifeboat(
            config, "--log-format", log_format, "restore", "ch", "--to-host", "127.0.0.1", "--to-port", closed,
            "--to-http-port", closed, "--to-database", "elsewhere",
        )  # fmt: skip
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert closed in result.stderr and "error:" in result.stderr
