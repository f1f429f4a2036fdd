"""The ``local`` scratch environment of one drill run: its slots (slots.py) under a workdir of its
own, and a marker file per run that records what the run started, so that a leftover of a killed
run is found and removed by the next run and by the janitor (leftovers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from backup.execute import CommandError
from backup.execute import run as run_program
from backup.repository.manifest import SnapshotHeader
from drills.scratch.base import CommandRun, Slot, tail
from drills.scratch.common import ScratchError
from drills.scratch.local.leftovers import RUNS, cleanup_leftovers
from drills.scratch.local.slots import SLOTS
from policies.errors import LifeboatError
from policies.model import CommandCheck, LocalScratch

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def run_here(check: CommandCheck, env: dict[str, str]) -> CommandRun:
    """Run a drill's command check on this machine with ``env`` and ``PATH`` (nothing else of
    Lifeboat's environment), in an empty temporary directory, killed past its timeout."""
    with tempfile.TemporaryDirectory(prefix="lifeboat-check-") as workdir:
        try:
            done = run_program(
                check.command,
                timeout=check.timeout.total_seconds(),
                env={"PATH": os.environ.get("PATH", DEFAULT_PATH), **env},
                inherit_env=False,
                check=False,
                cwd=Path(workdir),
            )
        except CommandError as exc:
            return CommandRun(None, [], str(exc))
    return CommandRun(done.returncode, tail(done.stdout) + tail(done.stderr))


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

    def command_view(self, slot: Slot) -> Slot:
        """A command check runs on this machine: it reaches the copy as the verification does."""
        return slot

    def run_command(self, check: CommandCheck, env: dict[str, str]) -> CommandRun:
        return run_here(check, env)

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
