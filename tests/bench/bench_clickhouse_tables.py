"""Benchmark: a ClickHouse logical backup and restore of a database of many small tables vs the same
rows in one table.

    .venv/bin/python tests/bench/bench_clickhouse_tables.py [--tables 300] [--rows 1000] [--repeat 3]

Starts its own ClickHouse 18.16 server on free ports, fills database ``many`` with ``--tables``
MergeTree tables of ``--rows`` rows each and database ``one`` with one table of all those rows.
Then, in the same run, rounds of ``lifeboat backup run`` (CLI child process, a fresh local
repository each time) and ``lifeboat restore`` (into a new database, verification included) of
each, interleaved; prints the best wall time of each, the client's and the server's CPU seconds, and
the ratios many / one (issue 22, item 3: the per-table cost). Then an incremental backup of ``many``
with nothing changed, and one after a row was added to one table (expect one partition exported,
the others reused). Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the policy builder
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/bench/: bench_clickhouse's helpers

from bench_clickhouse import Run, best, http, lifeboat, run_child
from bench_clickhouse_partitions import fresh_backup, incrementals, policies, print_reuse
from cpu import compile_lifeboat

from backup.servers import ClickHouseProcess, start_clickhouse

COLUMNS = "(day Date, id UInt64, user String, value Float64, tags Array(String))"
ROW = (
    "toDate('2026-01-01') + number % 28, number, concat('user-', toString(number % 1000)), number * 0.5, "
    "[toString(number % 7)]"
)


def fill(server: ClickHouseProcess, tables: int, rows: int) -> None:
    for database in ("many", "one"):
        http(server, f"CREATE DATABASE {database}")
    http(server, f"CREATE TABLE one.t {COLUMNS} ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id")
    for number in range(tables):
        table = f"many.t{number:05d}"
        http(server, f"CREATE TABLE {table} {COLUMNS} ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id")
        http(server, f"INSERT INTO {table} SELECT {ROW} FROM system.numbers LIMIT {rows}")
    http(server, f"INSERT INTO one.t SELECT {ROW} FROM system.numbers LIMIT {rows * tables}")
    http(server, "OPTIMIZE TABLE one.t FINAL")


def restore(config: Path, source: str, server: ClickHouseProcess, database: str) -> Run:
    target = ["--to-host", server.host, "--to-port", str(server.tcp_port), "--to-http-port", str(server.http_port)]
    run = run_child(lifeboat(config, "restore", source, *target, "--to-database", database, "--json"), server=server)
    http(server, f"DROP DATABASE {database}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    compile_lifeboat()
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-tables-"))
    try:
        with start_clickhouse(workdir / "server") as server:
            fill(server, arguments.tables, arguments.rows)
            configs = policies(workdir, server)
            backups: dict[str, list[Run]] = {"many": [], "one": []}
            restores: dict[str, list[Run]] = {"many": [], "one": []}
            for attempt in range(arguments.repeat):
                for name, config in configs.items():
                    backups[name].append(fresh_backup(config, name, server))
                    restores[name].append(restore(config, name, server, f"restored_{name}_{attempt}"))
            change = f"INSERT INTO many.t{arguments.tables // 2:05d} VALUES ('2026-01-01', 99999999999, 'new', 1.0, [])"
            unchanged, one_changed = incrementals(configs["many"], server, change)
        many, one = best(backups["many"]), best(backups["one"])
        many_restore, one_restore = best(restores["many"]), best(restores["one"])
        total = arguments.tables * arguments.rows
        print(f"\nClickHouse 18.16, {total:,} rows; best of {arguments.repeat} interleaved rounds\n")
        print(f"{'':<44}{'wall s':>8}{'client CPU s':>14}{'server CPU s':>14}")
        for label, run in (
            (f"backup, {arguments.tables} tables", many),
            ("backup, same rows in one table", one),
            (f"restore (+ verify), {arguments.tables} tables", many_restore),
            ("restore (+ verify), one table", one_restore),
            ("incremental, nothing changed", unchanged),
            ("incremental, one table changed", one_changed),
        ):
            print(f"{label:<44}{run.seconds:>8.2f}{run.cpu:>14.2f}{run.server_cpu:>14.2f}")
        print()
        for label, mine, theirs in (("backup", many, one), ("restore", many_restore, one_restore)):
            print(
                f"ratio many / one table, {label}: wall {mine.seconds / theirs.seconds:.2f}, "
                f"client CPU {mine.cpu / max(theirs.cpu, 0.01):.2f}, "
                f"server CPU {mine.server_cpu / max(theirs.server_cpu, 0.01):.2f}"
            )
        print_reuse(unchanged, one_changed, "table")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
