"""The drill checks of etcd sources: a key, a prefix (its key count) or a Kubernetes object, read
through the JSON gateway with ``count_only`` (no value is read), on the source or a restored copy."""

from __future__ import annotations

from typing import Any, ClassVar

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Observation, Source
from backup.sources.etcd.census import NESTED_RESOURCES, REGISTRY
from backup.sources.etcd.gateway import EtcdGateway, ssl_context_for
from backup.sources.etcd.targets import EtcdEndpointTarget
from policies.errors import SourceError
from policies.model import EtcdCheck, EtcdSettings, reveal


def object_key(check: EtcdCheck) -> str:
    """The etcd key Kubernetes keeps an object under: /registry/<resource>/[<namespace>/]<name>
    (services one level deeper: /registry/services/specs/...)."""
    ref = check.kubernetes
    assert ref is not None
    nested = "specs/" if ref.resource in NESTED_RESOURCES else ""
    namespace = f"{ref.namespace}/" if ref.namespace else ""
    return f"{REGISTRY}{ref.resource}/{nested}{namespace}{ref.name}"


class EtcdChecks:
    captures_at_backup: ClassVar[bool] = True

    def on_source(self, source: Source, check: EtcdCheck) -> Observation:
        settings: EtcdSettings = source.settings  # type: ignore[attr-defined]
        context = ssl_context_for(settings.tls, f"sources.{source.name}")
        failures = []
        for endpoint in settings.endpoints:
            try:
                with EtcdGateway(
                    endpoint, ssl_context=context, user=settings.user, password=reveal(settings.password)
                ) as gw:
                    return _observe(gw, check)
            except SourceError as exc:
                failures.append(f"{endpoint}: {exc}")
        raise SourceError("no endpoint answered: " + "; ".join(failures))

    def on_copy(self, source: Source, header: SnapshotHeader, target: Any, check: EtcdCheck) -> Observation:
        if not isinstance(target, EtcdEndpointTarget):
            raise SourceError(f"etcd checks need a running copy, not {target!r}")
        settings: EtcdSettings = source.settings  # type: ignore[attr-defined]
        context = ssl_context_for(target.tls, "the restored copy")
        # A restored member keeps the source's users: the source's credentials read it.
        with EtcdGateway(target.endpoint, ssl_context=context, user=settings.user, password=reveal(settings.password)) as gw:
            return _observe(gw, check)

    def captured(self, header: SnapshotHeader, repository: Repository, check: EtcdCheck) -> Observation | None:
        return None  # in the manifest's meta


def _observe(gateway: EtcdGateway, check: EtcdCheck) -> Observation:
    if check.prefix is not None:
        count = gateway.count(check.prefix.encode(), prefix=True)
        return Observation(count, count, f"{count} key(s) under {check.prefix}")
    key = check.key if check.key is not None else object_key(check)
    count = gateway.count(key.encode(), prefix=False)
    return Observation(count, count, f"key {key} {'present' if count else 'absent'}")
