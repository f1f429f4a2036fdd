"""The per-source locks: one holder at a time, in this process and across processes; a busy source
names its holder; a lock dies with its process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lifeboat.state.source_locks import SourceBusy, SourceLocks


def in_another_process(lock_dir: Path, body: str) -> subprocess.Popen[str]:
    """Start ``body`` in a fresh Python that has ``locks`` (the source locks in ``lock_dir``) open."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from lifeboat.state.source_locks import SourceLocks
        locks = SourceLocks(Path({str(lock_dir)!r}))
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_source_lock_waits_for_its_holder_in_this_process(tmp_path: Path) -> None:
    locks = SourceLocks(tmp_path / "locks")
    order: list[str] = []
    holding = threading.Event()

    def backup() -> None:
        with locks.hold(["k8s-etcd"], purpose="backup k8s-etcd", wait=5):
            holding.set()
            time.sleep(0.3)
            order.append("backup done")

    thread = threading.Thread(target=backup)
    thread.start()
    holding.wait(5)
    with locks.hold(["models", "k8s-etcd"], purpose="drill nightly", wait=5):
        order.append("drill started")
    thread.join()
    assert order == ["backup done", "drill started"]


def test_a_busy_source_names_its_holder_when_the_wait_runs_out(tmp_path: Path) -> None:
    locks = SourceLocks(tmp_path / "locks")
    with locks.hold(["k8s-etcd"], purpose="backup k8s-etcd", wait=1):
        other = SourceLocks(tmp_path / "locks")  # another SourceLocks: only the file lock is shared
        with pytest.raises(SourceBusy, match=r"source 'k8s-etcd' is busy: backup k8s-etcd \(host .*, pid \d+"):
            with other.hold(["k8s-etcd"], purpose="prune", wait=0.3):
                pass
        with other.hold(["models"], purpose="backup models", wait=0.3):
            pass  # other sources are free


def test_a_source_lock_held_by_another_process_is_freed_when_it_dies(tmp_path: Path) -> None:
    child = in_another_process(
        tmp_path / "locks",
        """
        with locks.hold(["k8s-etcd"], purpose="backup k8s-etcd", wait=5):
            print("holding", flush=True)
            time.sleep(60)
        """,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        locks = SourceLocks(tmp_path / "locks")
        with pytest.raises(SourceBusy, match=f"pid {child.pid}"):
            with locks.hold(["k8s-etcd"], purpose="drill nightly", wait=0.3):
                pass
    finally:
        child.kill()
        child.wait()
    with locks.hold(["k8s-etcd"], purpose="drill nightly", wait=5):
        pass
