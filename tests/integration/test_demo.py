"""`lifeboat demo --small`: the whole story a new user runs first, end to end, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_binaries

pytestmark = pytest.mark.integration


def run_demo(workdir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    require_binaries("etcd", "etcdctl", "clickhouse-server")
    return subprocess.run(
        [sys.executable, "-m", "lifeboat", "demo", "--small", "--workdir", str(workdir), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_runs_the_whole_story_and_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = run_demo(workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for line in (
        "1. Starting local servers",
        "3. Backing up every source, twice",
        "verdict: PASS",
        "5. Restore point `platform`",
        "verdict: PASS   platform RTO",
        "drill PASS check:model-uris-resolve: all 4 reference(s) from features exist in the restored models",
        "drill PASS check:model-store-bucket: all 1 reference(s) from k8s-etcd exist in the restored models",
        "6. Stopping the servers",
    ):
        assert line in out
    assert "email to the team: [lifeboat] nightly PASS: 3 sources" in out
    assert any(row.strip().startswith("restore point platform-") and ": complete, spread" in row for row in out.splitlines())
    for source in ("k8s-etcd", "features", "models"):
        assert any(row.split()[:2] == [source, "PASS"] for row in out.splitlines() if row.strip()), source
    for check in ("model-scores-present", "users-as-at-backup", "ranker-v3", "click-logs", "training-pods"):
        assert f"PASS check:{check}: expected " in out, check
    assert "drill PASS check:smoke: " in out
    html = next(line.split("HTML report: ")[1] for line in out.splitlines() if "HTML report: " in line)
    assert Path(html).is_file() and "PASS" in Path(html).read_text()
    leftovers = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True, check=False).stdout
    assert leftovers.strip() == ""  # every server the demo started is stopped


def test_demo_broken_shows_a_check_catching_a_table_the_etl_emptied(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = run_demo(workdir, "--broken")
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]  # the drill FAILs
    assert "verdict: FAIL" in out
    assert "FAIL check:model-scores-present: expected >= 1; seen 0" in out
    # The restore point's drill names the model file a cleanup job deleted while the feature store names it.
    dangling = "s3://models/ranker/v2/part-00004.bin"
    caught = "drill FAIL check:model-uris-resolve: 1 of 4 reference(s) from features name nothing in the restored models"
    assert f"{caught}: {dangling}" in out
    assert "drill PASS check:model-store-bucket" in out
    # The restore itself was faithful: the fingerprint matched, only the team's check saw the loss.
    assert not any("FAIL verify" in line or "ERROR verify" in line for line in out.splitlines())
    leftovers = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True, check=False).stdout
    assert leftovers.strip() == ""
