"""Scratch environments by kind (``scratch.kind`` in the policy)."""

from __future__ import annotations

from collections.abc import Callable

from drills.scratch.base import ScratchEnvironment, Slot
from drills.scratch.kubernetes import KubernetesScratchEnvironment
from drills.scratch.local import LocalScratchEnvironment
from policies.errors import ConfigError, ConfigIssue
from policies.model import Scratch

SCRATCH: dict[str, Callable[[Scratch, str], ScratchEnvironment]] = {
    "local": lambda settings, run_id: LocalScratchEnvironment(settings.local, run_id),
    # The drill name is not passed to factories yet: the namespace's lifeboat.io/drill label is the run id.
    "kubernetes": lambda settings, run_id: KubernetesScratchEnvironment(settings.kubernetes, run_id),
}


def make_scratch(settings: Scratch, run_id: str) -> ScratchEnvironment:
    try:
        factory = SCRATCH[settings.kind]
    except KeyError:
        known = ", ".join(sorted(SCRATCH))
        raise ConfigError(
            "", [ConfigIssue("scratch.kind", f"scratch kind '{settings.kind}' is not available yet; known: {known}")]
        ) from None
    return factory(settings, run_id)


__all__ = ["SCRATCH", "ScratchEnvironment", "Slot", "make_scratch"]
