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


def clean_leftovers(settings: Scratch, *, dry_run: bool = False) -> list[str]:
    """The janitor (``lifeboat janitor``, and ``scratch.janitor.schedule`` in the service): what dead
    drill runs left behind on the local scratch servers; on Kubernetes (when that is the scratch kind,
    or namespaces to clean are configured), expired drill namespaces and old finished pods and Jobs.
    Returns what went (or would go, in a dry run)."""
    from drills.scratch.local import cleanup_leftovers

    removed = cleanup_leftovers(settings.local, dry_run=dry_run)
    if settings.kind == "kubernetes" or settings.kubernetes.janitor_namespaces:
        from drills.janitor_k8s import run_janitor
        from drills.scratch.kubernetes import KubernetesApi, make_api_client

        api = KubernetesApi(make_api_client(settings.kubernetes))
        removed += run_janitor(api, settings.kubernetes, dry_run=dry_run).items()
    return removed


__all__ = ["SCRATCH", "ScratchEnvironment", "ScratchFactory", "Slot", "clean_leftovers", "make_scratch"]
