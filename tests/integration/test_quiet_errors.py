"""What a user sees when a restore cannot reach its target: one clear error, no driver traceback."""

from __future__ import annotations

import os
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


def test_a_restore_to_a_closed_port_prints_no_traceback(tmp_path: Path, clickhouse_server: Any) -> None:
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
    assert lifeboat(config, "backup", "run").returncode == 0
    closed = str(free_port())
    for log_format in ("console", "json"):
        result = lifeboat(
            config, "--log-format", log_format, "restore", "ch", "--to-host", "127.0.0.1", "--to-port", closed,
            "--to-http-port", closed, "--to-database", "elsewhere",
        )  # fmt: skip
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert closed in result.stderr and "error:" in result.stderr
