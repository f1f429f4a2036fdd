"""Repository locks: when a lock is stale (the rule), and what lock takers and ``remove_locks`` do with one."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backup.repository.locks import LockInfo, RepositoryLocked, ThisHost, list_locks, remove_locks, stale_reason
from backup.repository.maintenance import check
from backup.repository.repository import Repository
from backup.repository.store import LocalStore

HERE = ThisHost(name="db-backup-1", boot_id="boot-now", pid_namespace="pid:[4026531836]", uptime=600.0)
LIVE = {4242: 777}  # pid -> its start time (clock ticks after boot)


def lock(**fields: object) -> LockInfo:
    """A lock written by pid 4242 on this host in this boot, 10 s ago."""
    base = LockInfo(
        key="locks/a.json",
        kind="exclusive",
        purpose="prune",
        host="db-backup-1",
        pid=4242,
        created="2026-01-01T00:00:00+00:00",
        age_seconds=10.0,
        boot_id="boot-now",
        pid_namespace="pid:[4026531836]",
        process_start=777,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def reason(info: LockInfo, *, here: ThisHost = HERE, live: dict[int, int] = LIVE) -> str | None:
    return stale_reason(info, stale_after=1800, here=here, process_start=live.get)


def test_a_running_holder_on_this_host_keeps_its_lock() -> None:
    assert reason(lock()) is None


def test_a_holder_gone_from_this_host_is_stale_at_once() -> None:
    assert "process 4242 is gone" in (reason(lock(), live={}) or "")


def test_a_reused_pid_is_not_mistaken_for_the_holder() -> None:
    assert "another process" in (reason(lock(process_start=776)) or "")


def test_a_lock_from_an_earlier_boot_of_this_host_is_stale_at_once() -> None:
    earlier = lock(boot_id="boot-before", age_seconds=HERE.uptime + 5)  # type: ignore[operator]
    assert "reboot" in (reason(earlier) or "")


def test_a_same_named_machine_heartbeating_since_this_boot_keeps_the_heartbeat_rule() -> None:
    """Another boot id but a heartbeat since this host booted: not this host's past, another machine."""
    assert reason(lock(boot_id="other-machine", age_seconds=60)) is None
    assert "no heartbeat" in (reason(lock(boot_id="other-machine", age_seconds=4000)) or "")


def test_another_hosts_lock_goes_stale_by_heartbeat_only() -> None:
    elsewhere = lock(host="db-backup-2")
    assert reason(elsewhere, live={}) is None
    assert "no heartbeat for 30m01s (over 30m00s)" in (reason(replace(elsewhere, age_seconds=1801), live={}) or "")


def test_another_pid_namespace_keeps_the_heartbeat_rule() -> None:
    """A container on this machine sees other pids: its holder's pid tells nothing here."""
    assert reason(lock(pid_namespace="pid:[4026532000]"), live={}) is None


def test_old_lock_files_without_identity_keep_the_heartbeat_rule() -> None:
    old = lock(boot_id=None, pid_namespace=None, process_start=None)
    assert reason(old, live={}) is None
    assert "no heartbeat" in (reason(replace(old, age_seconds=1801), live={}) or "")


def test_without_a_boot_id_here_only_heartbeats_count() -> None:
    assert reason(lock(), here=replace(HERE, boot_id=None), live={}) is None


def test_a_live_holder_silent_longer_than_stale_after_is_stale() -> None:
    assert "no heartbeat" in (reason(lock(age_seconds=1801)) or "")


# ---- with real processes ------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository.init(LocalStore(tmp_path / "repo"))
    yield repository
    repository.close()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant(repo: Repository, name: str, **fields: object) -> str:
    """A lock file as a process of this host in this boot writes it, with ``fields`` changed."""
    here = ThisHost.current()
    body = {
        "kind": "exclusive",
        "purpose": "prune",
        "host": here.name,
        "pid": os.getpid(),
        "created": "2026-01-01T00:00:00+00:00",
        "boot_id": here.boot_id,
        "pid_namespace": here.pid_namespace,
        "process_start": _own_start(),
        **fields,
    }
    key = f"locks/{name}.json"
    repo.store.put(key, io.BytesIO(json.dumps(body).encode()))
    return key


def _own_start() -> int:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def test_new_locks_carry_the_host_boot_and_process_identity(repo: Repository) -> None:
    with repo.lock("shared", "backup"):
        [info] = list_locks(repo.store)
    assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
    assert info.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert info.process_start == _own_start() and info.pid_namespace == str(Path("/proc/self/ns/pid").readlink())


def test_a_lock_taker_removes_a_dead_holders_lock_and_a_live_one_still_blocks(repo: Repository) -> None:
    dead = plant(repo, "dead", pid=dead_pid())
    with repo.lock("shared", "backup"):
        assert not repo.store.exists(dead)
    plant(repo, "live")  # this very process: alive
    with pytest.raises(RepositoryLocked, match="exclusive lock for prune"), repo.lock("shared", "backup"):
        pass


def test_a_reused_pid_with_another_start_time_is_stale(repo: Repository) -> None:
    reused = plant(repo, "reused", process_start=_own_start() - 1)
    with repo.lock("shared", "backup"):
        assert not repo.store.exists(reused)


def test_check_names_a_dead_holders_lock_and_remove_locks_keeps_the_live_ones(repo: Repository) -> None:
    dead = plant(repo, "dead", pid=dead_pid(), kind="shared", purpose="drill nightly")
    live = plant(repo, "live", kind="shared", purpose="backup etcd")
    [problem] = check(repo).problems
    assert problem.kind == "stale-lock" and "drill nightly" in problem.message and "is gone" in problem.message
    sweep = remove_locks(repo.store, stale_after=1800)
    assert [(info.key, "is gone" in why) for info, why in sweep.removed] == [(dead, True)]
    assert [info.key for info in sweep.kept] == [live] and repo.store.exists(live)
    assert check(repo).ok
    everything = remove_locks(repo.store, stale_after=1800, live_too=True)
    assert [info.key for info, _ in everything.removed] == [live] and list_locks(repo.store) == []


def test_an_old_style_lock_of_a_dead_pid_waits_for_its_heartbeat(repo: Repository) -> None:
    key = "locks/old.json"
    body = {"kind": "exclusive", "purpose": "prune", "host": socket.gethostname(), "pid": dead_pid(), "created": "x"}
    repo.store.put(key, io.BytesIO(json.dumps(body).encode()))
    with pytest.raises(RepositoryLocked), repo.lock("shared", "backup"):
        pass
    old = time.time() - 3600
    os.utime(repo.store.inner.root / key, (old, old))  # type: ignore[attr-defined]
    with repo.lock("shared", "backup", stale_after=60):
        assert not repo.store.exists(key)
