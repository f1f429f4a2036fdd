"""Benchmark: a ClickHouse logical backup of one table of many partitions vs the same rows in one.

    .venv/bin/python tests/bench/bench_clickhouse_partitions.py [--partitions 1000] [--rows 1000000] [--repeat 3]

Starts its own ClickHouse 18.16 server on free ports, fills two tables with the same rows: ``many.t``
partitioned into ``--partitions`` partitions, ``one.t`` in a single partition. Then, in the same
run, rounds of ``lifeboat backup run`` (CLI child process, a fresh local repository each time) of
each, interleaved; prints the best wall time of each, the client's and the server's CPU seconds,
and the ratio many / one (issue 22's goal: within 2x); beside it the same ratio for the floor, a
bare ``clickhouse-client .. FORMAT Native`` export of each table (the server's own cost of reading
many parts). Then an incremental backup of the many-partition table with nothing changed, and one
after a row was added to one partition (expect one partition exported, the others reused).
Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the policy builder
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/bench/: bench_clickhouse's helpers

from bench_clickhouse import Run, best, client, http, lifeboat, run_child
from cpu import compile_lifeboat
from policy_builder import PolicyBuilder

from backup.servers import ClickHouseProcess, start_clickhouse

COLUMNS = "(day Date, p UInt32, id UInt64, user String, value Float64, tags Array(String))"


def fill(server: ClickHouseProcess, partitions: int, rows: int) -> None:
    for database, key in (("many", "p"), ("one", "tuple()")):
        http(server, f"CREATE DATABASE {database}")
        http(server, f"CREATE TABLE {database}.t {COLUMNS} ENGINE = MergeTree PARTITION BY {key} ORDER BY (p, id)")
    # 18.16 refuses an insert block spanning more than 100 partitions: insert 100 partitions at a time.
    for first in range(0, partitions, 100):
        last = min(first + 100, partitions)
        http(
            server,
            f"INSERT INTO many.t SELECT toDate('2026-01-01') + number % 120, {first} + number % {last - first}, number, "
            f"concat('user-', toString(number % 1000)), number * 0.5, [toString(number % 7)] FROM system.numbers "
            f"LIMIT {rows * (last - first) // partitions}",
        )
    http(server, "INSERT INTO one.t SELECT * FROM many.t")
    http(server, "OPTIMIZE TABLE one.t FINAL")


def policy(directory: Path, server: ClickHouseProcess, database: str) -> Path:
    policy = PolicyBuilder(directory / "repo", state=directory / "state.db")
    ports = {"port": server.tcp_port, "http_port": server.http_port}
    policy.source(database, "clickhouse", host=server.host, **ports, databases=[database], retention={"keep_last": 100})
    return policy.write(directory / "lifeboat.yaml")


def backup(config: Path, source: str, server: ClickHouseProcess) -> Run:
    return run_child(lifeboat(config, "backup", "run", "--source", source, "--json"), server=server)


def policies(workdir: Path, server: ClickHouseProcess) -> dict[str, Path]:
    """The policies of databases ``many`` and ``one``, each in a directory of its own under ``workdir``."""
    return {name: policy(workdir / name, server, name) for name in ("many", "one")}


def fresh_backup(config: Path, source: str, server: ClickHouseProcess) -> Run:
    """A backup of ``source`` into a new repository (and state) in ``config``'s directory."""
    shutil.rmtree(config.parent / "repo", ignore_errors=True)
    (config.parent / "state.db").unlink(missing_ok=True)
    run_child(lifeboat(config, "repo", "init"))
    return backup(config, source, server)


def incrementals(config: Path, server: ClickHouseProcess, change: str) -> tuple[Run, Run]:
    """Backups of ``many`` (its last one in ``config``'s repository): nothing changed, then after ``change``."""
    unchanged = backup(config, "many", server)
    http(server, change)
    return unchanged, backup(config, "many", server)


def print_reuse(unchanged: Run, changed: Run, what: str) -> None:
    """How many partitions the incremental backups (``incrementals``) reused and exported."""
    for label, run in (("nothing changed", unchanged), (f"one {what} changed", changed)):
        report = json.loads(run.stdout)["snapshots"][0]
        print(f"incremental, {label}: {report['partitions_reused']} reused, {report['partitions_exported']} exported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    compile_lifeboat()
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-partitions-"))
    try:
        with start_clickhouse(workdir / "server") as server:
            fill(server, arguments.partitions, arguments.rows)
            configs = policies(workdir, server)
            runs: dict[str, list[Run]] = {"many": [], "one": []}
            floors: dict[str, list[Run]] = {"many": [], "one": []}
            for _ in range(arguments.repeat):
                for name, config in configs.items():
                    export = client(server, f"SELECT * FROM {name}.t FORMAT Native")
                    floors[name].append(run_child(export, stdout=workdir / "floor.native", server=server))
                    runs[name].append(fresh_backup(config, name, server))
            change = "INSERT INTO many.t VALUES ('2026-01-01', 7, 99999999999, 'new', 1.0, [])"
            unchanged, one_changed = incrementals(configs["many"], server, change)
        many, one = best(runs["many"]), best(runs["one"])
        floor_many, floor_one = best(floors["many"]), best(floors["one"])
        exported = json.loads(many.stdout)["snapshots"][0]
        print(f"\nClickHouse 18.16, {arguments.rows:,} rows; best of {arguments.repeat} interleaved rounds\n")
        print(f"{'backup':<40}{'wall s':>8}{'client CPU s':>14}{'server CPU s':>14}")
        for label, run in (
            (f"floor: clickhouse-client export, {arguments.partitions} p.", floor_many),
            ("floor: the same, one partition", floor_one),
            (f"one table, {arguments.partitions} partitions", many),
            ("same rows, one partition", one),
            ("incremental, nothing changed", unchanged),
            ("incremental, one partition changed", one_changed),
        ):
            print(f"{label:<40}{run.seconds:>8.2f}{run.cpu:>14.2f}{run.server_cpu:>14.2f}")
        print(f"\nratio many / one partition: {many.seconds / one.seconds:.2f} (goal: within 2x)")
        print(f"the floor's own ratio (a bare export, no fingerprint): {floor_many.seconds / floor_one.seconds:.2f}")
        print(f"partitions exported by the first backup: {exported['partitions_exported']}")
        print_reuse(unchanged, one_changed, "partition")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
