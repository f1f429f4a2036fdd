"""Benchmark: the ClickHouse source's logical backup and restore against the bare tools.

    .venv/bin/python tests/bench/bench_clickhouse.py [--rows 10000000] [--repeat 2]

Starts its own ClickHouse 18.16 server on free ports (backup.servers.start_clickhouse), fills a table
of ~10 million rows (4 monthly partitions), then measures in the same run:

* floor backup: ``clickhouse-client --query "SELECT * FROM t FORMAT Native" > file``
* Lifeboat backup: ``lifeboat backup run`` (CLI child process, local file:// repository): Native
  over HTTP, chunked, zstd-compressed, hashed, plus the server-side fingerprint of every partition
* floor restore: ``clickhouse-client --query "INSERT INTO t2 FORMAT Native" < file``
* Lifeboat restore: ``lifeboat restore`` into a new database, including its verification (a full
  fingerprint of the restored table, which the floor does not do)
* Lifeboat incremental backup with nothing changed (expect seconds and no data read)

Times are the best of ``--repeat`` runs; peak RSS is the Lifeboat child's (os.wait4). Everything
lives in a temporary directory that is removed at the end, and the server is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup.servers import ClickHouseProcess, start_clickhouse

TABLE = "bench.t"
MIB = 2**20
SOURCE = "bench"


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mib: float
    stdout: str


def run_child(argv: Sequence[str], *, stdin: Path | None = None, stdout: Path | None = None) -> Run:
    """Run a child to completion; its wall time and its own peak RSS (from wait4, not the running max
    of every child). Raises SystemExit with its stderr when it fails."""
    started = time.perf_counter()
    with (
        open(stdin, "rb") if stdin else open(os.devnull, "rb") as source,
        open(stdout, "wb") if stdout else tempfile.TemporaryFile() as sink,
        tempfile.TemporaryFile() as errors,
    ):
        child = subprocess.Popen(list(argv), stdin=source, stdout=sink, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({child.returncode}): {errors.read().decode(errors='replace')[-2000:]}")
        output = ""
        if not stdout:
            sink.seek(0)
            output = sink.read().decode()
    return Run(seconds, usage.ru_maxrss / 1024, output)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda run: run.seconds)


def http(server: ClickHouseProcess, statement: str) -> str:
    request = urllib.request.Request(server.http_url, data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read().decode()


def fill(server: ClickHouseProcess, rows: int) -> None:
    http(server, "CREATE DATABASE bench")
    http(
        server,
        f"CREATE TABLE {TABLE} (day Date, id UInt64, user String, value Float64, tags Array(String)) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, id)",
    )
    http(
        server,
        f"INSERT INTO {TABLE} SELECT toDate('2026-01-01') + number % 120, number, concat('user-', toString(number % 1000)), "
        f"number * 0.5, [toString(number % 7)] FROM system.numbers LIMIT {rows}",
    )
    for month in ("202601", "202602", "202603", "202604"):
        http(server, f"OPTIMIZE TABLE {TABLE} PARTITION {month} FINAL")


def policy(directory: Path, server: ClickHouseProcess) -> Path:
    config = directory / "lifeboat.yaml"
    config.write_text(
        f"repository: {{url: 'file://{directory / 'repo'}'}}\n"
        f"state: {directory / 'state.db'}\n"
        "sources:\n"
        f"  {SOURCE}:\n"
        "    kind: clickhouse\n"
        f"    host: {server.host}\n"
        f"    port: {server.tcp_port}\n"
        f"    http_port: {server.http_port}\n"
        "    databases: [bench]\n"
        "    retention: {keep_last: 100}\n"
    )
    return config


def lifeboat(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lifeboat", "--config", str(config), "--log-format", "json", *args]


def client(server: ClickHouseProcess, query: str) -> list[str]:
    return ["clickhouse-client", "--host", server.host, "--port", str(server.tcp_port), "--query", query]


@dataclass(frozen=True)
class Results:
    floor_backup: Run
    backup: Run
    incremental: Run
    floor_restore: Run
    restore: Run
    native_bytes: int

    def report(self, name: str) -> dict[str, Any]:
        """The --json document a Lifeboat run printed (backup: its one snapshot)."""
        document: dict[str, Any] = json.loads(getattr(self, name).stdout)
        return document["snapshots"][0] if "snapshots" in document else document


def measure(server: ClickHouseProcess, workdir: Path, repeat: int) -> Results:
    config = policy(workdir, server)
    native = workdir / "t.native"
    export = client(server, f"SELECT * FROM {TABLE} FORMAT Native")
    floor_backup = best([run_child(export, stdout=native) for _ in range(repeat)])
    backups = []
    for _ in range(repeat):
        shutil.rmtree(workdir / "repo", ignore_errors=True)
        backups.append(run_child(lifeboat(config, "backup", "run", "--source", SOURCE, "--json")))
    incremental = run_child(lifeboat(config, "backup", "run", "--source", SOURCE, "--json"))
    floors, restores = [], []
    for attempt in range(repeat):
        http(server, "DROP TABLE IF EXISTS bench.t2")
        http(server, f"CREATE TABLE bench.t2 AS {TABLE}")
        floors.append(run_child(client(server, "INSERT INTO bench.t2 FORMAT Native"), stdin=native))
        database = f"restored_{attempt}"
        target = ["--to-host", server.host, "--to-port", str(server.tcp_port), "--to-http-port", str(server.http_port)]
        restores.append(run_child(lifeboat(config, "restore", SOURCE, *target, "--to-database", database, "--json")))
        http(server, f"DROP DATABASE {database}")
    return Results(floor_backup, best(backups), incremental, best(floors), best(restores), native.stat().st_size)


def print_report(results: Results, rows: int) -> None:
    backup, incremental, restore = results.report("backup"), results.report("incremental"), results.report("restore")
    print(f"\nClickHouse 18.16, {rows:,} rows, {results.native_bytes / MIB:.0f} MiB of Native data, 4 partitions\n")
    print(f"{'work':<32}{'floor s':>9}{'lifeboat s':>12}{'ratio':>8}{'lifeboat peak RSS':>20}")
    for label, floor, mine in (
        ("backup (export to storage)", results.floor_backup, results.backup),
        ("restore (import, + verify)", results.floor_restore, results.restore),
        ("incremental, nothing changed", None, results.incremental),
    ):
        floor_text = f"{floor.seconds:>9.2f}" if floor else f"{'-':>9}"
        ratio = f"{mine.seconds / floor.seconds:>8.2f}" if floor else f"{'-':>8}"
        print(f"{label:<32}{floor_text}{mine.seconds:>12.2f}{ratio}{mine.peak_rss_mib:>16.0f} MiB")
    read, stored = backup["bytes_read"] / MIB, backup["bytes_stored"] / MIB
    print(
        f"\nbackup: read {read:.0f} MiB, stored {stored:.0f} MiB, {backup['partitions_exported']} partitions exported, "
        f"{backup['retries']} retries, {backup['unpinned']} unpinned"
    )
    print(
        f"incremental: read {incremental['bytes_read']} bytes, {incremental['partitions_reused']} partitions reused, "
        f"{incremental['partitions_exported']} exported"
    )
    print(f"restore verification: {restore['verification']['verdict']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    arguments = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-clickhouse-"))
    try:
        with start_clickhouse(workdir / "server") as server:
            fill(server, arguments.rows)
            results = measure(server, workdir, arguments.repeat)
        print_report(results, arguments.rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
