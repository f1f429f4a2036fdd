"""How ``lifeboat serve`` aborts a running job at shutdown.

What "abort" does, exactly (``abort_jobs``, called by ``LifeboatService`` when the running jobs
did not finish within ``service.stop_timeout``):

1. ``aborting`` is set: from then on a job's failure is recorded as ``interrupted`` and notifies
   nobody; a backup's progress callback raises ``JobAborted`` at its next block of data.
2. ``JobAborted`` (a BaseException) is raised into each running job's thread with CPython's
   ``PyThreadState_SetAsyncExc``. It lands at the thread's next Python bytecode, never inside a C
   call, so:
3. every child process of ``lifeboat serve`` (etcdctl, scratch etcd servers, ...) gets SIGTERM,
   which ends the waits on them (not when the service runs in-process: see ``abort_jobs``).
4. The exception unwinds the job through its ``finally`` and ``with`` blocks: an uncommitted
   snapshot stays uncommitted (no manifest; its chunks are garbage for a later prune, so the
   repository stays consistent), repository lock files are deleted, a drill's scratch environment
   is torn down, the source locks are released, and the run is recorded ``interrupted``.

The jobs get ``ABORT_GRACE_SECONDS`` to unwind. A thread stuck in a C call that never returns (a
socket read without a timeout) cannot be unwound: its run is recorded ``interrupted`` anyway, and
``serve`` exits 1 without waiting for it; the kernel frees the source file locks, and a repository
lock it held is stale as soon as the process is gone (``backup.repository.locks``): the next lock
taker on this host removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifeboat.service.jobs import JobSpec  # the job table imports the operations, which import JobAborted

ABORT_GRACE_SECONDS = 30.0  # after an abort, how long jobs get to unwind through their finally blocks


class JobAborted(BaseException):
    """Raised into a job that the service aborts at shutdown.

    A BaseException, so that no ``except Exception`` on the way up mistakes it for a failure of
    the job; every ``finally`` and ``with`` block on the way still runs (locks released, scratch
    torn down, an uncommitted snapshot left uncommitted)."""


@dataclass
class RunningJob:
    """A job in progress on a worker thread, and the means to abort it."""

    spec: JobSpec
    thread_id: int
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _done: bool = False

    def progress(self, moved: int) -> None:
        """A backup's progress callback: the cooperative abort point."""
        if self.cancel.is_set():
            raise JobAborted(f"{self.spec.id}: the service is stopping")

    def abort(self) -> None:
        """Ask the job to stop, and raise JobAborted into its thread unless it has finished."""
        self.cancel.set()
        with self._guard:
            if not self._done:
                _raise_in_thread(self.thread_id, JobAborted)

    def finish(self) -> None:
        """Called by the job's own thread as it ends: no abort may land after this."""
        with self._guard:
            self._done = True
        _raise_in_thread(self.thread_id, None)  # drop an abort raised but not delivered yet


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next bytecode (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception is not None else None
    )


def stop_child_processes() -> list[int]:
    """SIGTERM every descendant process of this one (Linux ``/proc``); return their pids."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(parent, []).append(int(entry.name))
    found, queue = [], list(parents.get(os.getpid(), []))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += parents.get(pid, [])
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    return found


def abort_jobs(jobs: Iterable[RunningJob], *, aborting: threading.Event, stop_children: bool) -> list[int]:
    """Steps 1 to 3 of the module docstring for ``jobs``; return the pids of the child processes stopped.

    ``stop_children`` only when this process is ``lifeboat serve``: run in-process (tests, an embedding
    program), the children may be someone else's servers, and the raised exception has to do on its own."""
    aborting.set()
    for job in jobs:
        job.abort()
    return stop_child_processes() if stop_children else []
