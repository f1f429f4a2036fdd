"""Locks of dead processes: a SIGKILLed lock holder never blocks the next run on its host, a live one
still does, another host's lock waits for its heartbeat, and ``lifeboat unlock`` clears them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from policy_builder import PolicyBuilder

from backup.servers import EtcdProcess

pytestmark = pytest.mark.integration
LIFEBOAT = Path(sys.executable).with_name("lifeboat")

# Takes a repository lock through the real API, says so, and holds it until killed.
HOLDER = """
import sys, time
from pathlib import Path
from backup.repository import open_repository
from policies.loader import load_policy
repository = open_repository(load_policy(Path(sys.argv[1])).repository)
with repository.lock(sys.argv[2], sys.argv[3]):
    print("locked", flush=True)
    time.sleep(600)
"""


def lifeboat(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(LIFEBOAT), "--config", str(config), "--log-format", "json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def write_policy(root: Path, etcd: EtcdProcess, **source: Any) -> Path:
    policy = PolicyBuilder(root / "repo", state=root / "state.db", prune={"grace": "1s"})
    policy.source("k8s-etcd", "etcd", endpoints=[etcd.endpoint], retention={"keep_last": 5}, **source)
    return policy.write(root / "lifeboat.yaml")


@pytest.fixture
def config(tmp_path: Path, etcd_server: EtcdProcess) -> Path:
    """A repository with one etcd snapshot in it."""
    path = write_policy(tmp_path, etcd_server)
    assert lifeboat(path, "repo", "init").returncode == 0
    backup = lifeboat(path, "backup", "run")
    assert backup.returncode == 0, backup.stderr
    return path


def slow_etcdctl(root: Path) -> tuple[Path, Path]:
    """An etcdctl that, for ``snapshot save``, touches a marker and sleeps long before saving."""
    marker = root / "saving"
    wrapper = root / "slow-etcdctl"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = snapshot ] && [ "$2" = save ]; then touch {marker}; sleep 600; fi\nexec etcdctl "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, marker


def hold(config: Path, kind: str, purpose: str) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(config), kind, purpose], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert holder.stdout is not None
    for line in holder.stdout:  # unconfigured structlog logs to stdout too: the lock broken on the way
        if line.strip() == b"locked":
            return holder
    raise AssertionError(f"the lock holder ended with {holder.wait()} before it held the lock")


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def restore(config: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return lifeboat(config, "restore", "k8s-etcd", "--to-file", str(target))


def lock_files(config: Path) -> list[Path]:
    return sorted((config.parent / "repo" / "locks").glob("*.json"))


def test_a_killed_prunes_lock_is_removed_at_once_by_the_next_restore_and_backup(config: Path, tmp_path: Path) -> None:
    prune = hold(config, "exclusive", "prune")
    try:
        blocked = restore(config, tmp_path / "blocked.db")
        assert blocked.returncode == 1 and f"exclusive lock for prune by {socket.gethostname()} pid {prune.pid}" in (
            blocked.stderr
        )
    finally:
        kill(prune)

    restored = restore(config, tmp_path / "restored.db")
    assert restored.returncode == 0, restored.stderr
    assert "lock.stale_removed" in restored.stderr and f"pid {prune.pid}" in restored.stderr
    assert f"process {prune.pid} is gone" in restored.stderr
    assert (tmp_path / "restored.db").stat().st_size > 0

    second = hold(config, "exclusive", "prune")
    kill(second)
    backup = lifeboat(config, "backup", "run")
    assert backup.returncode == 0, backup.stderr
    assert "lock.stale_removed" in backup.stderr and f"pid {second.pid}" in backup.stderr
    checked = lifeboat(config, "check", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["problems"] == []
    assert lock_files(config) == []


def test_check_removes_a_dead_holders_lock_instead_of_reporting_it(config: Path) -> None:
    drill = hold(config, "shared", "drill nightly")
    kill(drill)
    checked = lifeboat(config, "check", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True
    assert "lock.stale_removed" in checked.stderr and "drill nightly" in checked.stderr
    assert lock_files(config) == []


def test_a_backup_killed_mid_snapshot_does_not_hold_up_prune(tmp_path: Path, etcd_server: EtcdProcess) -> None:
    wrapper, marker = slow_etcdctl(tmp_path)
    config = write_policy(tmp_path, etcd_server, etcdctl=str(wrapper))
    assert lifeboat(config, "repo", "init").returncode == 0
    backup = subprocess.Popen(
        [str(LIFEBOAT), "--config", str(config), "backup", "run"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # etcdctl is saving: the backup holds its shared lock
            assert time.monotonic() < deadline and backup.poll() is None
            time.sleep(0.1)
        assert len(lock_files(config)) == 1
    finally:
        os.killpg(backup.pid, signal.SIGKILL)
        backup.wait(timeout=10)
    pruned = lifeboat(config, "prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert "lock.stale_removed" in pruned.stderr and f"pid {backup.pid}" in pruned.stderr


def test_unlock_removes_stale_locks_and_with_all_and_yes_live_ones(config: Path) -> None:
    live = hold(config, "shared", "drill nightly")
    dead = hold(config, "shared", "backup k8s-etcd")  # after the live one: a lock taker removes stale locks
    kill(dead)
    try:
        listed = lifeboat(config, "unlock", "--json")
        assert listed.returncode == 0, listed.stderr
        document = json.loads(listed.stdout)
        assert [(lock["pid"], lock["purpose"], lock["host"]) for lock in document["removed"]] == [
            (dead.pid, "backup k8s-etcd", socket.gethostname())
        ]
        assert "is gone" in document["removed"][0]["stale"] and document["removed"][0]["age_seconds"] >= 0
        assert [(lock["pid"], lock["purpose"]) for lock in document["kept"]] == [(live.pid, "drill nightly")]
        assert len(lock_files(config)) == 1

        refused = lifeboat(config, "unlock", "--all")
        assert refused.returncode == 2 and "--yes" in refused.stderr and len(lock_files(config)) == 1

        forced = lifeboat(config, "unlock", "--all", "--yes")
        assert forced.returncode == 0, forced.stderr
        assert f"removed live shared lock for drill nightly by {socket.gethostname()} pid {live.pid}" in forced.stdout
        assert lock_files(config) == []
        again = json.loads(lifeboat(config, "unlock", "--json").stdout)
        assert again == {"removed": [], "kept": []}
    finally:
        kill(live)


def plant(config: Path, name: str, **fields: Any) -> Path:
    """A lock file as another Lifeboat process would have written it."""
    body = {"kind": "exclusive", "purpose": "prune", "created": "2026-01-01T00:00:00+00:00", **fields}
    path = config.parent / "repo" / "locks" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(body))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_another_hosts_lock_waits_for_its_heartbeat(config: Path, tmp_path: Path) -> None:
    elsewhere = plant(config, "elsewhere", host="backup-2.example", pid=dead_pid(), boot_id="0f5c", pid_namespace="pid:[1]")
    kept = json.loads(lifeboat(config, "unlock", "--json").stdout)
    assert kept["removed"] == [] and [lock["host"] for lock in kept["kept"]] == ["backup-2.example"]
    blocked = restore(config, tmp_path / "blocked.db")
    assert blocked.returncode == 1 and "backup-2.example" in blocked.stderr and elsewhere.exists()

    an_hour_ago = time.time() - 3600  # longer than lock_stale_after (30m) without a heartbeat
    os.utime(elsewhere, (an_hour_ago, an_hour_ago))
    restored = restore(config, tmp_path / "restored.db")
    assert restored.returncode == 0, restored.stderr
    assert "no heartbeat for" in restored.stderr and not elsewhere.exists()


def test_a_reused_pid_is_not_taken_for_the_holder(config: Path, tmp_path: Path) -> None:
    """The lock names a pid that is alive, but the process of that pid started after the holder."""
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        here = {
            "host": socket.gethostname(),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pid_namespace": str(Path("/proc/self/ns/pid").readlink()),
        }
        start = int(Path(f"/proc/{stand_in.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        honest = plant(config, "honest", pid=stand_in.pid, process_start=start, **here)
        blocked = restore(config, tmp_path / "blocked.db")
        assert blocked.returncode == 1 and f"pid {stand_in.pid}" in blocked.stderr
        honest.unlink()
        plant(config, "reused", pid=stand_in.pid, process_start=start - 100, **here)
        restored = restore(config, tmp_path / "restored.db")
        assert restored.returncode == 0, restored.stderr
        assert f"pid {stand_in.pid} now belongs to another process" in restored.stderr
    finally:
        stand_in.kill()
        stand_in.wait()


def test_the_janitor_removes_a_dead_drills_lock(config: Path) -> None:
    drill = hold(config, "shared", "drill nightly")
    kill(drill)
    preview = json.loads(lifeboat(config, "janitor", "--dry-run", "--json").stdout)
    assert len(lock_files(config)) == 1 and any(f"pid {drill.pid}" in item for item in preview["removed"])
    cleaned = lifeboat(config, "janitor", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    [item] = [item for item in json.loads(cleaned.stdout)["removed"] if "lock" in item]
    assert "drill nightly" in item and f"process {drill.pid} is gone" in item and lock_files(config) == []
