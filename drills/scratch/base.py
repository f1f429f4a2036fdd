"""Scratch environments: empty targets for a drill's restores, always torn down (DESIGN section 5).

An environment hands out ``Slot``s, one per restore (a drill restores a source several times: the
timed restore, then once per fault scenario that needs a fresh target). A slot knows its kind's
scratch server: where a restore must write (``restore_options``), how to bring the restored data up,
how to kill it, stage a disaster on it or tamper with it, and how to remove it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from backup.repository.manifest import SnapshotHeader
from backup.sources.base import RestoreOptions


class Slot(Protocol):
    kind: str
    label: str  # for reports: what and where this target is

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        """The ``lifeboat restore`` options that put a snapshot into this slot (through its relay
        when the slot is killable, unless ``direct``)."""
        ...

    def after_restore(self) -> None:
        """Bring the restored data up (etcd: start a server from the data dir); part of the RTO."""
        ...

    def verify_target(self) -> Any | None:
        """The target ``Source.verify`` compares with the snapshot; None: the restore target itself,
        reached directly rather than through the slot's relay."""
        ...

    def interrupt(self) -> str:
        """kill-target: kill or cut off this slot's scratch server now; says what it did."""
        ...

    def stage_disaster(self) -> str:
        """disaster: destroy the restored copy the way production would lose it; says what it did."""
        ...

    def tampers(self) -> dict[str, Callable[[], str]]:
        """verifier-canary: the tamper kinds this slot can apply to its restored copy, by name
        (``value-without-revision``, ``schema``, ``object-tags``...). Each changes the copy in one
        way verification must catch and says what it changed; the canary applies each one to its own
        freshly restored copy."""
        ...

    def release(self) -> None:
        """Remove this slot's scratch data and processes; safe to call twice."""
        ...


class ScratchEnvironment(Protocol):
    run_id: str
    runs_command_checks: bool  # a drill's command checks can run here against its copies

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> Slot:
        """A new, empty target for one restore of ``source``; ``killable``: one that ``interrupt``
        can kill mid-restore. Raises on a scratch server that is not there (the drill records
        ERROR: could not verify)."""
        ...

    def teardown(self) -> list[str]:
        """Release every slot handed out and the run's workdir; returns what was removed."""
        ...
