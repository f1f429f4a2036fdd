"""Scratch environments by kind (``scratch.kind`` in the policy)."""

from __future__ import annotations

from typing import Protocol

from drills.scratch.base import ScratchEnvironment, Slot
from policies.errors import ConfigError, ConfigIssue
from policies.model import Policy, Scratch


class ScratchFactory(Protocol):
    def __call__(
        self, settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None
    ) -> ScratchEnvironment: ...


def _local(settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None) -> ScratchEnvironment:
    from drills.scratch.local import LocalScratchEnvironment  # each kind's clients load when used

    return LocalScratchEnvironment(settings.local, run_id)  # names carry the run id only


def _kubernetes(settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None) -> ScratchEnvironment:
    from drills.scratch.kubernetes import KubernetesScratchEnvironment

    return KubernetesScratchEnvironment(settings.kubernetes, run_id, drill=drill, policy=policy)


SCRATCH: dict[str, ScratchFactory] = {"local": _local, "kubernetes": _kubernetes}


def make_scratch(
    settings: Scratch, run_id: str, *, drill: str | None = None, policy: Policy | None = None
) -> ScratchEnvironment:
    """The scratch environment of ``settings.kind`` for drill run ``run_id`` of drill ``drill``
    (labels and reports name it; without it, the run id). ``policy``: the whole policy, which a
    kubernetes scratch hands to the pods that restore etcd inside the cluster. Raises ConfigError
    on an unknown kind."""
    try:
        factory = SCRATCH[settings.kind]
    except KeyError:
        known = ", ".join(sorted(SCRATCH))
        raise ConfigError(
            "", [ConfigIssue("scratch.kind", f"scratch kind '{settings.kind}' is not available yet; known: {known}")]
        ) from None
    return factory(settings, run_id, drill=drill, policy=policy)


__all__ = ["SCRATCH", "ScratchEnvironment", "ScratchFactory", "Slot", "make_scratch"]
