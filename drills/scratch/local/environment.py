"""The ``local`` scratch environment of one drill run: its slots (slots.py) under a workdir of its
own, and a marker file per run that records what the run started, so that a leftover of a killed
run is found and removed by the next run and by the janitor (leftovers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backup.repository.manifest import SnapshotHeader
from drills.scratch.base import Slot
from drills.scratch.common import ScratchError
from drills.scratch.local.leftovers import RUNS, cleanup_leftovers
from drills.scratch.local.slots import SLOTS
from policies.errors import LifeboatError
from policies.model import LocalScratch


@dataclass
class _Marker:
    run_id: str
    pid: int
    host: str
    started: str
    names: dict[str, list[str]] = field(default_factory=dict)  # kind -> databases / buckets
    pids: list[int] = field(default_factory=list)


class LocalScratchEnvironment:
    """Scratch targets on this machine and the configured scratch servers, for one drill run."""

    runs_command_checks = True  # programs run on this machine, reaching the copies on loopback

    def __init__(self, settings: LocalScratch, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.workdir = settings.workdir / run_id
        self._slots: list[Slot] = []
        self._count = 0
        self._marker = _Marker(run_id, os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat())
        cleanup_leftovers(settings)  # what a killed run left behind goes first
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save_marker()

    def _save_marker(self) -> None:
        path = self.settings.workdir / RUNS / f"{self.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._marker.__dict__))

    def record_pid(self, pid: int) -> None:
        self._marker.pids.append(pid)
        self._save_marker()

    def record_name(self, kind: str, name: str) -> None:
        self._marker.names.setdefault(kind, []).append(name)
        self._save_marker()

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> Slot:
        self._count += 1
        try:
            made = SLOTS[kind].provision(self, source=source, number=self._count, killable=killable)
        except LifeboatError:
            raise
        except Exception as exc:
            raise ScratchError(f"cannot provision a scratch {kind} target: {type(exc).__name__}: {exc}") from exc
        self._slots.append(made)
        return made

    def teardown(self) -> list[str]:
        removed = []
        for made in reversed(self._slots):
            made.release()
            removed.append(made.label)
        self._slots.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        (self.settings.workdir / RUNS / f"{self.run_id}.json").unlink(missing_ok=True)
        return removed
