"""The drill checks of etcd sources: a key, a prefix (its key count) or a Kubernetes object, read
through the JSON gateway with ``count_only`` (no value is read), on the source or a restored copy."""

from __future__ import annotations

from typing import Any, ClassVar

import yaml

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Observation, Source
from backup.sources.etcd.census import NESTED_RESOURCES, REGISTRY
from backup.sources.etcd.gateway import EtcdGateway, ssl_context_for
from backup.sources.etcd.targets import EtcdEndpointTarget
from policies.errors import SourceError
from policies.model import EtcdCheck, EtcdSettings, ReferenceFrom, reveal


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

    def reference_values(self, source: Source, header: SnapshotHeader, target: Any, origin: ReferenceFrom) -> list[str]:
        """The ``origin.field`` (a dotted path) of every JSON or YAML value under ``origin.prefix`` in the
        copy; values that are neither (Kubernetes' protobuf) or lack the field give nothing."""
        prefix = str(origin.prefix).encode()
        path = str(origin.field or "").split(".")
        found: list[str] = []
        with self._gateway(source, target) as gw:
            start = prefix
            while True:
                gw.request_keys(start, values=True)
                page = gw.read_keys()
                for key, (value, *_) in zip(page.keys, page.values, strict=False):
                    if not key.startswith(prefix):
                        return found
                    found += _field_values(value, path)
                if not page.more or not page.keys:
                    return found
                start = page.keys[-1] + b"\0"

    def missing_references(self, source: Source, header: SnapshotHeader, target: Any, values: list[str]) -> list[str]:
        """Values naming a key the copy does not hold."""
        with self._gateway(source, target) as gw:
            return [value for value in values if gw.count(value.encode(), prefix=False) == 0]

    def _gateway(self, source: Source, target: Any) -> EtcdGateway:
        if not isinstance(target, EtcdEndpointTarget):
            raise SourceError(f"etcd checks need a running copy, not {target!r}")
        settings: EtcdSettings = source.settings  # type: ignore[attr-defined]
        context = ssl_context_for(target.tls, "the restored copy")
        return EtcdGateway(target.endpoint, ssl_context=context, user=settings.user, password=reveal(settings.password))


def _field_values(value: bytes, path: list[str]) -> list[str]:
    """The values at ``path`` in a JSON or YAML document (each item of a list); none when it is not one."""
    try:
        node: Any = yaml.safe_load(value.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return []
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return []
    items = node if isinstance(node, list) else [node]
    return [str(item) for item in items if isinstance(item, str | int | float) and not isinstance(item, bool)]


def _observe(gateway: EtcdGateway, check: EtcdCheck) -> Observation:
    if check.prefix is not None:
        count = gateway.count(check.prefix.encode(), prefix=True)
        return Observation(count, count, f"{count} key(s) under {check.prefix}")
    key = check.key if check.key is not None else object_key(check)
    count = gateway.count(key.encode(), prefix=False)
    return Observation(count, count, f"key {key} {'present' if count else 'absent'}")
