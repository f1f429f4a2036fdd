"""Start-up cost: what a command imports is what it needs (issue 22: start-up weighs in every short run).

No timings here: each test runs a command in a fresh interpreter and lists the heavy modules it loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import click
from policy_builder import PolicyBuilder

from lifeboat.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[3]
# Each costs from 15 to 100 ms to import, and none is needed by every command.
HEAVY = (
    "apscheduler",  # the service's scheduler
    "prometheus_client",  # the service's /metrics
    "boto3",
    "botocore",  # S3 repositories and sources
    "kubernetes",  # Kubernetes scratch and executor
    "clickhouse_driver",  # ClickHouse sources and checks
    "cryptography",  # encrypted repositories, signed evidence
    "rich",  # the progress bar on a terminal
    "drills.runner",
    "drills.report",  # drills and their reports
    "pydantic",  # the policy's models
    "structlog",
    "backup",
)


def loaded_heavy_modules(code: str, cwd: Path, *, heavy: tuple[str, ...] = HEAVY) -> tuple[list[str], str]:
    """Run ``code`` in a fresh interpreter (stderr not a terminal); return the modules of ``heavy`` it
    loaded, and what it printed on stdout before."""
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.__stdout__))\n"
        f"{code}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    *printed, last_line = result.stdout.strip().splitlines()
    loaded: list[str] = ast.literal_eval(last_line)
    return loaded, "\n".join(printed)


def run_cli(*args: str) -> str:
    return f"import sys\nsys.argv = ['lifeboat', *{list(args)!r}]\nfrom lifeboat.cli import main\nmain()"


def test_help_loads_none_of_the_heavy_modules(tmp_path: Path) -> None:
    loaded, printed = loaded_heavy_modules(run_cli("--help"), tmp_path)
    assert "backup" in printed and "serve" in printed
    assert loaded == []


def test_a_backup_of_etcd_loads_neither_the_service_nor_the_drills_nor_other_sources(tmp_path: Path) -> None:
    """An unencrypted repository, an etcd source (here unreachable: the run fails after doing its
    work), logs to a pipe: what remains is the policy, the repository (its codec imports
    cryptography) and structlog."""
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:9"])
    config = str(policy.write(tmp_path / "lifeboat.yaml"))
    loaded_heavy_modules(run_cli("--config", config, "repo", "init"), tmp_path)
    loaded, printed = loaded_heavy_modules(run_cli("--config", config, "backup", "run", "--json"), tmp_path)
    assert [error["source"] for error in json.loads(printed)["errors"]] == ["k8s-etcd"]  # it got to the source
    assert loaded == ["backup", "cryptography", "pydantic", "structlog"]


def test_the_command_list_of_help_says_what_each_command_says_of_itself() -> None:
    """``lifeboat --help`` lists the commands from lifeboat/cli.py's summaries, without importing them:
    each summary must shorten, at any width, to what the command's own help does."""
    context = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None and not command.hidden
        for width in (20, 45, 80, 200):
            listed = click.Command(name, help=summary).get_short_help_str(width)
            assert listed == command.get_short_help_str(width), name


def test_status_loads_neither_the_scheduler_nor_the_metrics(tmp_path: Path) -> None:
    """``status`` computes next runs with the scheduler's triggers only: the scheduler itself and
    prometheus_client are for ``serve``."""
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:9"], schedule="0 3 * * *")
    config = str(policy.write(tmp_path / "lifeboat.yaml"))
    loaded_heavy_modules(run_cli("--config", config, "repo", "init"), tmp_path)
    status = run_cli("--config", config, "status", "--json")
    loaded, printed = loaded_heavy_modules(status, tmp_path, heavy=("apscheduler.schedulers", "prometheus_client"))
    (source,) = json.loads(printed)["sources"]
    assert source["source"] == "k8s-etcd" and source["next_runs"]
    assert loaded == []


def test_a_run_that_reads_clickhouse_makes_no_table_of_every_date(tmp_path: Path) -> None:
    """clickhouse-driver, unless told otherwise, makes 146,097 dates when imported (1900 to 2299):
    0.07-0.1 s of each run that reads ClickHouse. The CLI tells it to make each date when first met;
    a date is still the same date."""
    probe = (
        "import contextlib, sys\n"
        "sys.argv = ['lifeboat', '--help']\n"
        "from lifeboat.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "from clickhouse_driver.columns.datecolumn import DateColumn\n"
        "print(len(DateColumn.date_lut), DateColumn.date_lut[19000], DateColumn.date_lut[-25567])"
    )
    _, printed = loaded_heavy_modules(probe, tmp_path)
    made, *dates = printed.splitlines()[-1].split()
    assert int(made) < 10
    assert dates == [str(date(1970, 1, 1) + timedelta(days=19000)), "1900-01-01"]
