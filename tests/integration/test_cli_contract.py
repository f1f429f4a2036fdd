"""The CLI contract (DESIGN section 7) on a real repository and a real S3 source (moto):

- every command with ``--json`` prints exactly one JSON document on stdout, on success and on every
  failure class (``{"ok": false, "error": {"kind", "message", ...}}``), with the contract's exit code;
- usage mistakes exit 2 (target options, unknown source or drill names, --snapshot with --at);
- only ``repo init`` creates a repository;
- a suspicious snapshot exits 4 with a warning, and restoring it says so;
- ``latest`` and unique id prefixes wherever a snapshot id is taken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from policy_builder import PolicyBuilder

from lifeboat.cli import cli

pytestmark = pytest.mark.integration
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}
OBJECTS = 20


@dataclass
class Contract:
    root: Path
    config: Path
    builder: PolicyBuilder
    bucket: str
    client: Any
    first: str = ""  # the first (good) snapshot of source "models"

    def run(self, *args: str, config: Path | None = None) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config or self.config), *args], catch_exceptions=False)

    def document(self, *args: str, code: int, config: Path | None = None) -> dict[str, Any]:
        """Run a ``--json`` command: exactly one JSON document on stdout, exit ``code``."""
        result = self.run(*args, config=config)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return one_document(result.stdout)


def one_document(stdout: str) -> dict[str, Any]:
    """The one JSON document ``stdout`` holds and nothing else (raises otherwise)."""
    document, end = json.JSONDecoder().raw_decode(stdout.lstrip())
    assert stdout.lstrip()[end:].strip() == "", f"more than one document on stdout: {stdout!r}"
    assert isinstance(document, dict)
    return document


def error_of(document: dict[str, Any], kind: str) -> dict[str, Any]:
    assert document["ok"] is False, document
    error = document["error"]
    assert error["kind"] == kind, error
    assert error["message"] and "Traceback" not in error["message"]
    return error


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Contract:
    root = tmp_path_factory.mktemp("contract")
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    for index in range(OBJECTS):
        client.put_object(Bucket=bucket, Key=f"models/m{index:02d}.bin", Body=os.urandom(500 + index))
    builder = PolicyBuilder(root / "repo", state=root / "state.db")
    builder.source("models", "s3", endpoint_url=s3_server.endpoint_url, buckets=[bucket], **S3_KEYS)
    builder.source("k8s-etcd", "etcd", endpoints=["http://127.0.0.1:1"])
    builder.source("features", "clickhouse", host="127.0.0.1", port=1, databases=["features"])
    scratch_s3 = {"endpoint_url": s3_server.endpoint_url, **S3_KEYS}
    builder.scratch("local", local={"workdir": root / "scratch", "s3": scratch_s3})
    builder.drill("nightly", sources=["models"], objectives={"rto": "30m", "rpo": "26h"})
    config = builder.write(root / "lifeboat.yaml")
    found = Contract(root, config, builder, bucket, client)
    assert found.run("repo", "init").exit_code == 0
    [snapshot] = found.document("backup", "run", "--source", "models", "--json", code=0)["snapshots"]
    found.first = snapshot["id"]
    return found


# ---- success: one document, exit 0 ------------------------------------------------------------


SUCCESSES = [
    ("policy", "validate", "--json"),
    ("snapshots", "list", "--json"),
    ("snapshots", "list", "--source", "models", "--json"),
    ("snapshots", "show", "latest", "--json"),
    ("check", "--json"),
    ("prune", "--dry-run", "--json"),
    ("status", "--json"),
    ("drill", "history", "--json"),
    ("drill", "history", "nightly", "--json"),
    ("janitor", "--dry-run", "--json"),
    ("snapshots", "ls", "latest", "--json"),
    ("snapshots", "ls", "latest", "models/*", "--json"),
    ("snapshots", "diff", "latest", "latest", "--json"),
    ("stats", "--json"),
    ("stats", "--source", "models", "--json"),
    ("snapshots", "list", "--since", "7d", "--status", "good", "--latest", "1", "--json"),
]


@pytest.mark.parametrize("args", SUCCESSES, ids=" ".join)
def test_every_json_command_prints_one_document_on_success(contract: Contract, args: tuple[str, ...]) -> None:
    document = contract.document(*args, code=0)
    assert "error" not in document


def test_restore_and_verify_print_one_document_and_say_the_snapshot_is_good(contract: Contract) -> None:
    target = contract.root / "restored"
    restored = contract.document("restore", "models", "--to-dir", str(target), "--json", code=0)
    assert restored["snapshot"] == contract.first and restored["suspicious"] is False
    assert len(list(target.rglob("*.bin"))) == OBJECTS
    verified = contract.document("verify", "models", "--to-dir", str(target), "--json", code=0)
    assert verified["verdict"] == "match"


# ---- failure classes: one document, the contract's exit code ----------------------------------


JSON_COMMANDS = [
    ("backup", "run", "--json"),
    ("snapshots", "list", "--json"),
    ("snapshots", "show", "latest", "--json"),
    ("restore", "models", "--to-dir", "/nonexistent/x", "--json"),
    ("verify", "models", "--to-dir", "/nonexistent/x", "--json"),
    ("check", "--json"),
    ("prune", "--json"),
    ("status", "--json"),
    ("drill", "run", "nightly", "--json"),
    ("drill", "history", "--json"),
    ("janitor", "--json"),
    ("copy", "--to", "/nonexistent/other.yaml", "--json"),
    ("repo", "key", "list", "--json"),
]


@pytest.mark.parametrize("args", JSON_COMMANDS, ids=" ".join)
def test_a_bad_config_is_one_config_error_document_exit_2(contract: Contract, args: tuple[str, ...]) -> None:
    broken = contract.builder.copy().set("sources.models.buckets", "not-a-list").set("repository.url", "ftp://x")
    config = broken.write(contract.root / "broken.yaml")
    error = error_of(contract.document(*args, code=2, config=config), "config")
    assert {issue["path"] for issue in error["errors"]} >= {"repository", "sources.models.buckets"}
    assert all(issue["message"] for issue in error["errors"])


UNKNOWN_NAMES = [
    ("backup", "run", "--source", "nope", "--json"),
    ("snapshots", "list", "--source", "nope", "--json"),
    ("restore", "nope", "--to-dir", "/tmp/x", "--json"),
    ("verify", "nope", "--to-dir", "/tmp/x", "--json"),
    ("drill", "run", "nosuch", "--json"),
    ("drill", "history", "nosuch", "--json"),
    ("stats", "--source", "nope", "--json"),
]


@pytest.mark.parametrize("args", UNKNOWN_NAMES, ids=" ".join)
def test_an_unknown_source_or_drill_is_a_usage_error(contract: Contract, args: tuple[str, ...]) -> None:
    error = error_of(contract.document(*args, code=2), "usage")
    assert "nope" in error["message"] or "nosuch" in error["message"]


def test_unknown_names_exit_2_without_json_too(contract: Contract) -> None:
    for args in (("snapshots", "list", "--source", "nope"), ("drill", "history", "nosuch")):
        result = contract.run(*args)
        assert result.exit_code == 2 and result.stdout == "" and "unknown" in result.stderr, args


@pytest.mark.parametrize(
    "args",
    [
        ("snapshots", "show", "nope", "--json"),
        ("snapshots", "show", "models-19990101T000000Z-ffff", "--json"),
        ("restore", "models", "--snapshot", "nope", "--to-dir", "/tmp/x", "--json"),
        ("snapshots", "ls", "nope", "--json"),
        ("snapshots", "diff", "latest", "nope", "--json"),
    ],
    ids=" ".join,
)
def test_an_unknown_snapshot_is_a_not_found_document_exit_1(contract: Contract, args: tuple[str, ...]) -> None:
    assert "nope" in error_of(contract.document(*args, code=1), "not-found")["message"] or "1999" in args[2]


USAGE_MISTAKES = [
    ("restore", "models", "--json"),  # no target
    ("restore", "models", "--to-file", "/tmp/x.db", "--json"),  # another kind's target option
    ("restore", "models", "--to-dir", "/tmp/x", "--to-bucket", "b", "--json"),  # two targets
    ("restore", "k8s-etcd", "--to-data-dir", "/tmp/member", "--json"),  # without --name
    ("restore", "k8s-etcd", "--to-file", "/tmp/a.db", "--to-data-dir", "/tmp/b", "--json"),
    ("restore", "features", "--to-dir", "/tmp/x", "--json"),
    ("restore", "features", "--to-host", "127.0.0.1", "--json"),  # no --to-database
    ("restore", "models", "--snapshot", "latest", "--at", "2026-01-01T00:00:00", "--to-dir", "/tmp/x", "--json"),
    ("verify", "models", "--snapshot", "x", "--at", "2026-01-01T00:00:00", "--to-dir", "/tmp/x", "--json"),
    ("restore", "models", "--at", "yesterday", "--to-dir", "/tmp/x", "--json"),  # BadParameter
    ("check", "--read-data", "--read-data-subset", "5%", "--json"),
    ("snapshots", "list", "--no-such-option", "--json"),  # parsing error
    ("snapshots", "show", "--json"),  # missing argument
    ("drill", "history", "--limit", "many", "--json"),  # bad type
    ("snapshots", "list", "--since", "soon", "--json"),
    ("snapshots", "list", "--status", "bad", "--json"),
    ("snapshots", "list", "--latest", "0", "--json"),
    ("snapshots", "diff", "latest", "--json"),  # missing argument
]


@pytest.mark.parametrize("args", USAGE_MISTAKES, ids=" ".join)
def test_a_usage_mistake_is_a_usage_document_exit_2(contract: Contract, args: tuple[str, ...]) -> None:
    error_of(contract.document(*args, code=2), "usage")


@pytest.mark.parametrize(
    "args",
    [
        ("restore", "models", "--to-data-dir", "/tmp/member"),
        ("restore", "k8s-etcd", "--to-data-dir", "/tmp/member"),
        ("restore", "models"),
        ("restore", "models", "--to-dir", "/tmp/x", "--snapshot", "latest", "--at", "2026-01-01T00:00:00"),
    ],
    ids=" ".join,
)
def test_usage_mistakes_exit_2_without_json(contract: Contract, args: tuple[str, ...]) -> None:
    result = contract.run(*args)
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_a_failing_restore_is_a_restore_document_exit_1(contract: Contract) -> None:
    occupied = contract.root / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    error = error_of(contract.document("restore", "models", "--to-dir", str(occupied), "--json", code=1), "restore")
    assert "--yes" in error["message"]
    assert (occupied / "keep.txt").read_text() == "mine"


def test_a_parse_error_of_a_command_without_json_stays_clicks_usage_text(contract: Contract) -> None:
    result = contract.run("snapshots", "list", "--no-such-option")
    assert result.exit_code == 2 and result.stdout == "" and "No such option" in result.stderr


# ---- the repository is made by `repo init` only ------------------------------------------------


def test_backup_run_on_a_missing_repository_exits_2_and_creates_nothing(contract: Contract) -> None:
    typo = contract.root / "repo-typo"
    config = contract.builder.copy().set("repository.url", f"file://{typo}").write(contract.root / "typo.yaml")
    error = error_of(contract.document("backup", "run", "--json", config=config, code=2), "no-repository")
    assert "lifeboat repo init" in error["message"] and str(typo) in error["message"]
    text = contract.run("backup", "run", "--source", "models", config=config)
    assert text.exit_code == 2 and "lifeboat repo init" in text.stderr and "Traceback" not in text.stderr
    assert not typo.exists()
    for args in (("snapshots", "list"), ("check",), ("prune",)):
        assert contract.run(*args, config=config).exit_code == 2, args
    assert not typo.exists()


# ---- snapshot ids: latest and unique prefixes ---------------------------------------------------


def test_latest_and_unique_prefixes_name_a_snapshot(contract: Contract) -> None:
    latest = contract.document("snapshots", "show", "latest", "--json", code=0)
    prefix = contract.first[: len(contract.first) - 2]
    shown = contract.document("snapshots", "show", prefix, "--json", code=0)
    assert shown["id"] == contract.first
    text = contract.run("snapshots", "show", prefix)
    assert text.exit_code == 0 and contract.first in text.stdout
    assert latest["id"] == contract.document("snapshots", "list", "--json", code=0)["snapshots"][-1]["id"]
    target = contract.root / "by-prefix"
    restored = contract.document("restore", "models", "--snapshot", prefix, "--to-dir", str(target), "--json", code=0)
    assert restored["snapshot"] == contract.first
    verified = contract.document("verify", "models", "--snapshot", prefix, "--to-dir", str(target), "--json", code=0)
    assert verified["snapshot"] == contract.first


# ---- a suspicious snapshot: exit 4, a warning; restoring it says so ---------------------------


def test_a_suspicious_snapshot_exits_4_with_a_warning_and_its_restore_says_so(contract: Contract) -> None:
    time.sleep(1.05)  # snapshot ids carry seconds
    for index in range(OBJECTS - 3):
        contract.client.delete_object(Bucket=contract.bucket, Key=f"models/m{index:02d}.bin")
    result = contract.run("backup", "run", "--source", "models", "--json")
    assert result.exit_code == 4, (result.stdout, result.stderr)
    [snapshot] = one_document(result.stdout)["snapshots"]
    assert snapshot["status"] == "suspicious"
    assert "WARNING: suspicious snapshot" in result.stderr and snapshot["id"] in result.stderr

    # two snapshots now: the common prefix "models-" is ambiguous
    ambiguous = error_of(contract.document("snapshots", "show", "models-", "--json", code=2), "usage")
    assert contract.first in ambiguous["message"] and snapshot["id"] in ambiguous["message"]
    assert sorted(ambiguous["matches"]) == sorted([contract.first, snapshot["id"]])

    target = contract.root / "suspicious"
    restored = contract.run("restore", "models", "--snapshot", snapshot["id"], "--to-dir", str(target), "--json")
    assert restored.exit_code == 0, restored.stderr
    document = one_document(restored.stdout)
    assert document["suspicious"] is True and document["anomalies"] == snapshot["anomalies"]
    assert "WARNING" in restored.stderr and "suspicious" in restored.stderr
    text = contract.run("restore", "models", "--snapshot", snapshot["id"], "--to-dir", str(target), "--yes")
    assert text.exit_code == 0 and "suspicious" in text.stderr


def test_the_version_and_completion(contract: Contract) -> None:
    version = CliRunner().invoke(cli, ["-V"])
    assert version.exit_code == 0 and "lifeboat" in version.stdout
    env = {**os.environ, "_LIFEBOAT_COMPLETE": "bash_source"}
    done = subprocess.run(
        [sys.executable, "-c", "from lifeboat.cli import main; main()"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "_LIFEBOAT_COMPLETE" in done.stdout


# ---- a killed drill: status shows its run as interrupted --------------------------------------------


def test_status_shows_the_interrupted_run_of_a_killed_drill(contract: Contract) -> None:
    command = [sys.executable, "-m", "lifeboat", "--config", str(contract.config), "drill", "run", "nightly", "--no-email"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as drill:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [state] = contract.document("status", "--json", code=0)["drills"]
            if state["last_run"] and state["last_run"]["status"] == "running":
                break
            time.sleep(0.05)
        drill.kill()  # SIGKILL: no chance to record anything
        drill.wait(timeout=30)
    [state] = contract.document("status", "--json", code=0)["drills"]
    assert state["last_run"]["status"] == "interrupted" and "ended first" in state["last_run"]["error"], state
    text = contract.run("status")
    assert text.exit_code == 0 and "interrupted" in text.stdout.split("DRILL", 1)[1], text.stdout
    contract.run("janitor")  # the killed run's scratch leftovers
