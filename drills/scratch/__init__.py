"""Scratch environments by kind (``scratch.kind`` in the policy)."""

from __future__ import annotations

from typing import Protocol

from drills.scratch.base import ScratchEnvironment, Slot
from drills.scratch.kubernetes import KubernetesScratchEnvironment
from drills.scratch.local import LocalScratchEnvironment
from policies.errors import ConfigError, ConfigIssue
from policies.model import Scratch


class ScratchFactory(Protocol):
    def __call__(self, settings: Scratch, run_id: str, *, drill: str | None) -> ScratchEnvironment: ...


def _local(settings: Scratch, run_id: str, *, drill: str | None) -> ScratchEnvironment:
    return LocalScratchEnvironment(settings.local, run_id)  # names carry the run id only


def _kubernetes(settings: Scratch, run_id: str, *, drill: str | None) -> ScratchEnvironment:
    return KubernetesScratchEnvironment(settings.kubernetes, run_id, drill=drill)


SCRATCH: dict[str, ScratchFactory] = {"local": _local, "kubernetes": _kubernetes}


def make_scratch(settings: Scratch, run_id: str, *, drill: str | None = None) -> ScratchEnvironment:
    """The scratch environment of ``settings.kind`` for drill run ``run_id`` of drill ``drill``
    (labels and reports name it; without it, the run id). Raises ConfigError on an unknown kind."""
    try:
        factory = SCRATCH[settings.kind]
    except KeyError:
        known = ", ".join(sorted(SCRATCH))
        raise ConfigError(
            "", [ConfigIssue("scratch.kind", f"scratch kind '{settings.kind}' is not available yet; known: {known}")]
        ) from None
    return factory(settings, run_id, drill=drill)


__all__ = ["SCRATCH", "ScratchEnvironment", "ScratchFactory", "Slot", "make_scratch"]
