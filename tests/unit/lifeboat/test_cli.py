"""The CLI contract: exit codes, --json shapes, one-line summaries, no tracebacks for mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from policy_builder import PolicyBuilder

from lifeboat import __version__
from lifeboat.cli import cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.yaml"))

MISTAKES = textwrap.dedent(
    """
    sources:
      k8s-etcd:
        kind: etcd
        endpoints: [http://127.0.0.1:2379]
        schedule: "every night"
        retention: {keep_daily: 0}
      features: {kind: clikhouse, host: ch, password: "${CH_PASSWORD_FOR_TEST}"}
    drills:
      nightly: {sources: [k8s-etcd, nowhere], objectives: {rto: 30m, rpo: 26h}}
    """
)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_examples_exist() -> None:
    assert {path.name for path in EXAMPLES} >= {"production.yaml", "minimal.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_validates(example: Path) -> None:
    result = run("--config", str(example), "policy", "validate")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and ": OK: " in lines[0]


def test_production_example_uses_every_kind_of_plugin() -> None:
    result = run("--config", str(ROOT / "policies/examples/production.yaml"), "policy", "validate", "--json")
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["errors"] == []
    assert sorted(document["sources"].values()) == ["clickhouse", "etcd", "s3"]
    assert document["drills"] and len(document["notifiers"]) == 2


def test_mistakes_exit_2_and_are_all_listed(tmp_path: Path) -> None:
    config = tmp_path / "lifeboat.yaml"
    config.write_text(MISTAKES)
    result = run("--config", str(config), "policy", "validate")
    assert result.exit_code == 2
    assert result.stdout == ""
    for fragment in (
        "sources.k8s-etcd.schedule",
        "sources.k8s-etcd.retention: this retention keeps nothing",
        "sources.features.kind: unknown kind 'clikhouse'",
        "sources.features.password: undefined environment variable ${CH_PASSWORD_FOR_TEST}",
        "drills.nightly.sources[1]: undefined source 'nowhere'",
    ):
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_mistakes_as_json(tmp_path: Path) -> None:
    config = tmp_path / "lifeboat.yaml"
    config.write_text(MISTAKES)
    result = run("--config", str(config), "policy", "validate", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert [error["path"] for error in document["errors"]] == [
        "sources.k8s-etcd.schedule",
        "sources.k8s-etcd.retention",
        "sources.features.kind",
        "sources.features.password",
        "drills.nightly.sources[1]",
    ]
    assert all(set(error) >= {"path", "message"} for error in document["errors"])


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text((ROOT / "policies/examples/minimal.yaml").read_text())
    result = run("policy", "validate", env={"LIFEBOAT_CONFIG": str(config)})
    assert result.exit_code == 0 and str(config) in result.stdout


def test_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "nope.yaml"), "policy", "validate")
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_version_and_usage_errors() -> None:
    assert __version__ in run("--version").stdout
    assert run("no-such-command").exit_code == 2


def test_installed_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The real entry point, as scripts call it: exit code 2, plain lines on stderr, nothing on stdout."""
    config = tmp_path / "lifeboat.yaml"
    config.write_text(MISTAKES)
    script = Path(sys.executable).parent / "lifeboat"
    env = {k: v for k, v in os.environ.items() if k != "CH_PASSWORD_FOR_TEST"}
    argv = [str(script), "--config", str(config), "policy", "validate"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr and "5 errors" in done.stderr


def test_a_backup_command_starts_without_the_heavy_clients() -> None:
    """A cron job's ``backup run`` of one source pays only for what it uses: the Kubernetes client,
    boto3 and clickhouse-driver (0.5 s of imports together) load with the source kind or the
    executor that needs them."""
    probe = (
        "import sys; from lifeboat.cli import cli; "
        "cli.get_command(None, 'backup'); cli.get_command(None, 'restore'); "
        "from backup.sources import make_source; from policies.model import EtcdSettings; "
        "make_source('e', EtcdSettings(kind='etcd', endpoints=['http://127.0.0.1:2379'])); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'boto3', 'botocore', 'clickhouse_driver'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_backup_with_an_unusable_state_db_creates_no_repository(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the state directory should be")
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "not-a-dir" / "state.db")
    config = policy.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:1"]).write(tmp_path / "lifeboat.yaml")
    result = run("--config", str(config), "backup", "run")
    assert result.exit_code == 1
    assert "state" in result.stderr and "not-a-dir" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()
