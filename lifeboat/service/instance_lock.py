"""One ``lifeboat serve`` per state DB on a machine: an exclusive ``flock`` on
``locks/serve-<state file>.lock`` beside the state DB, holding the service's pid (for
``lifeboat serve --reload`` and ``lifeboat status``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lifeboat.service import ServiceError


def instance_lock_path(state: Path) -> Path:
    """Where the instance lock of the service using state DB ``state`` lives."""
    return state.parent / "locks" / f"serve-{state.name}.lock"


def running_service_pid(state: Path) -> int | None:
    """The pid of the ``lifeboat serve`` using state DB ``state`` on this machine, or None."""
    path = instance_lock_path(state)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(os.pread(fd, 4096, 0))["pid"])
        return -1
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def instance_lock(state: Path) -> Iterator[None]:
    """Hold the instance lock of state DB ``state`` while the block runs; ServiceError when another service holds it."""
    path = instance_lock_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = running_service_pid(state)
            raise ServiceError(f"another `lifeboat serve` (pid {other}) already uses the state DB {state}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid()}).encode(), 0)
        yield
    finally:
        os.close(fd)
