"""Scratch environments: empty targets for a drill's restores, always torn down (DESIGN section 5).

An environment hands out ``Slot``s, one per restore (a drill restores a source several times: the
timed restore, then once per fault scenario that needs a fresh target). A slot knows its kind's
scratch server: where a restore must write (``restore_options``), how to bring the restored data up,
how to kill it, stage a disaster on it or tamper with it, and how to remove it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from backup.repository.manifest import SnapshotHeader
from backup.sources.base import RestoreOptions
from policies.model import CommandCheck

OUTPUT_TAIL_LINES = 20  # of a command check's output, in its step's details


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


@dataclass(frozen=True)
class CommandRun:
    """How a drill's command check ended where the scratch environment ran it: the program's exit
    code, or None when it could not run (it cannot start, its image cannot be pulled, it outran its
    timeout) with ``problem`` saying why; and the tail of its output."""

    exit_code: int | None
    output: list[str]
    problem: str = ""


def tail(output: bytes | str) -> list[str]:
    """The last ``OUTPUT_TAIL_LINES`` lines of a program's output."""
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output
    return text.splitlines()[-OUTPUT_TAIL_LINES:]


class ScratchEnvironment(Protocol):
    run_id: str

    def command_view(self, slot: Slot) -> Slot:
        """``slot`` as a command check's program reaches it (kubernetes: by the service's DNS name from
        the check's pod, even when this process reaches it through a port-forward)."""
        ...

    def run_command(self, check: CommandCheck, env: dict[str, str]) -> CommandRun:
        """Run ``check.command`` with exactly ``env`` (the ``LIFEBOAT_*`` variables) and wait for its end."""
        ...

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> Slot:
        """A new, empty target for one restore of ``source``; ``killable``: one that ``interrupt``
        can kill mid-restore. Raises on a scratch server that is not there (the drill records
        ERROR: could not verify)."""
        ...

    def teardown(self) -> list[str]:
        """Release every slot handed out and the run's workdir; returns what was removed."""
        ...
