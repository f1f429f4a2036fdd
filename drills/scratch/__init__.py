"""Scratch environments by kind (``scratch.kind`` in the policy): the registry ``SCRATCH``.

Each kind is a package of the same shape (``local/``, ``kubernetes/``): an environment per drill
run, one slot class per source kind in its registry ``SLOTS``, and its janitor. A kind's clients
load when it is used: nothing here imports a kind's package at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drills.scratch.base import ScratchEnvironment, Slot
from policies.errors import ConfigError, ConfigIssue
from policies.model import Policy, Scratch


class ScratchFactory(Protocol):
    def __call__(
        self, settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None
    ) -> ScratchEnvironment: ...


class LeftoverCleaner(Protocol):
    def __call__(self, settings: Scratch, *, dry_run: bool) -> list[str]: ...


@dataclass(frozen=True)
class ScratchKind:
    """One scratch kind: how it makes the environment of a drill run, and its janitor, which runs when
    this is the policy's scratch kind, and also when ``janitor_wanted`` says its settings ask for it."""

    make: ScratchFactory
    clean_leftovers: LeftoverCleaner
    janitor_wanted: Callable[[Scratch], bool]


def _local(settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None) -> ScratchEnvironment:
    from drills.scratch.local.environment import LocalScratchEnvironment  # each kind's clients load when used

    return LocalScratchEnvironment(settings.local, run_id)  # names carry the run id only


def _local_leftovers(settings: Scratch, *, dry_run: bool) -> list[str]:
    from drills.scratch.local.leftovers import cleanup_leftovers

    return cleanup_leftovers(settings.local, dry_run=dry_run)


def _kubernetes(settings: Scratch, run_id: str, *, drill: str | None, policy: Policy | None) -> ScratchEnvironment:
    from drills.scratch.kubernetes.environment import KubernetesScratchEnvironment

    return KubernetesScratchEnvironment(settings.kubernetes, run_id, drill=drill, policy=policy)


def _kubernetes_leftovers(settings: Scratch, *, dry_run: bool) -> list[str]:
    from drills.scratch.kubernetes.janitor import clean_leftovers

    return clean_leftovers(settings.kubernetes, dry_run=dry_run)


SCRATCH: dict[str, ScratchKind] = {
    # local leftovers (marker files under the workdir, the scratch servers' prefixes) are looked for
    # whatever the scratch kind: a policy may have moved away from local scratch
    "local": ScratchKind(_local, _local_leftovers, janitor_wanted=lambda settings: True),
    # namespaces to clean of finished pods and Jobs make the kubernetes janitor run on any scratch kind
    "kubernetes": ScratchKind(
        _kubernetes, _kubernetes_leftovers, janitor_wanted=lambda settings: bool(settings.kubernetes.janitor_namespaces)
    ),
}


def make_scratch(
    settings: Scratch, run_id: str, *, drill: str | None = None, policy: Policy | None = None
) -> ScratchEnvironment:
    """The scratch environment of ``settings.kind`` for drill run ``run_id`` of drill ``drill``
    (labels and reports name it; without it, the run id). ``policy``: the whole policy, which a
    kubernetes scratch hands to the pods that restore etcd inside the cluster. Raises ConfigError
    on an unknown kind."""
    try:
        kind = SCRATCH[settings.kind]
    except KeyError:
        known = ", ".join(sorted(SCRATCH))
        raise ConfigError(
            "", [ConfigIssue("scratch.kind", f"scratch kind '{settings.kind}' is not available yet; known: {known}")]
        ) from None
    return kind.make(settings, run_id, drill=drill, policy=policy)


def clean_leftovers(settings: Scratch, *, dry_run: bool = False) -> list[str]:
    """The janitor (``lifeboat janitor``, and ``scratch.janitor.schedule`` in the service): what dead
    drill runs left behind on the local scratch servers; on Kubernetes (when that is the scratch kind,
    or namespaces to clean are configured), expired drill namespaces and old finished pods and Jobs.
    Returns what went (or would go, in a dry run)."""
    removed: list[str] = []
    for name, kind in SCRATCH.items():
        if name == settings.kind or kind.janitor_wanted(settings):
            removed += kind.clean_leftovers(settings, dry_run=dry_run)
    return removed


__all__ = [
    "SCRATCH",
    "LeftoverCleaner",
    "ScratchEnvironment",
    "ScratchFactory",
    "ScratchKind",
    "Slot",
    "clean_leftovers",
    "make_scratch",
]
