"""Per-source locks, so that a source's backup, prune and drill never overlap on this machine.

They live in the ``locks/`` directory beside the state DB (``RunHistory.lock_dir``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from lifeboat.state import StateError
from lifeboat.state.records import timestamp_text, utc_now
from policies.errors import LifeboatError

log = structlog.get_logger("lifeboat.state")  # the logger name the logs have always shown

LOCK_POLL_SECONDS = 0.2  # how often a waiter looks at a busy source lock again


class SourceBusy(LifeboatError):
    """Another run holds a source's lock and did not let go in time."""


class SourceLocks:
    """Per-source locks, so that a source's backup, prune and drill never overlap on this machine.

    Each lock is a ``threading.Lock`` (runs of this process) plus an exclusive ``flock`` on
    ``<lock_dir>/source-<name>.lock`` (other Lifeboat processes: the service and CLI runs, cron
    jobs). The kernel drops a flock when its process dies, so a crash never leaves one behind.
    Across machines the repository's own locks keep prune away from a running backup or drill.
    """

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._holders: dict[str, str] = {}

    @contextlib.contextmanager
    def hold(self, names: Iterable[str], *, purpose: str, wait: float) -> Iterator[None]:
        """Hold the locks of every source in ``names`` (taken in sorted order, so two runs that need
        overlapping sets cannot deadlock) while the block runs. Waits up to ``wait`` seconds in all,
        then raises SourceBusy naming who holds the lock."""
        deadline = time.monotonic() + wait
        with contextlib.ExitStack() as held:
            for name in sorted(set(names)):
                held.enter_context(self._hold_one(name, purpose, deadline))
            yield

    @contextlib.contextmanager
    def _hold_one(self, name: str, purpose: str, deadline: float) -> Iterator[None]:
        with self._guard:
            in_process = self._locks.setdefault(name, threading.Lock())
        # Short timeouts in a loop, not one long wait: a job aborted at shutdown must be able to
        # leave (an exception raised into a thread lands between bytecodes, never inside a C wait).
        while not in_process.acquire(timeout=LOCK_POLL_SECONDS):
            if time.monotonic() >= deadline:
                holder = self._holders.get(name, "another run")
                raise SourceBusy(f"source '{name}' is busy: {holder} holds it; gave up waiting")
        try:
            with self._file_lock(name, purpose, deadline):
                self._holders[name] = f"{purpose} (this process)"
                try:
                    yield
                finally:
                    self._holders.pop(name, None)
        finally:
            in_process.release()

    @contextlib.contextmanager
    def _file_lock(self, name: str, purpose: str, deadline: float) -> Iterator[None]:
        path = self.lock_dir / f"source-{name}.lock"
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StateError(f"cannot open the source lock {path}: {exc}") from exc
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SourceBusy(f"source '{name}' is busy: {_holder(fd)} holds it; gave up waiting") from None
                    if not waited:
                        log.info("lock.waiting", source=name, purpose=purpose, holder=_holder(fd))
                        waited = True
                    time.sleep(LOCK_POLL_SECONDS)
            holder = {
                "purpose": purpose,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": timestamp_text(utc_now()),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    """Who holds a source lock, from what the holder wrote into the file."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{doc['purpose']} (host {doc['host']}, pid {doc['pid']}, since {doc['since']})"
    except (OSError, ValueError, KeyError):
        return "another Lifeboat process"
