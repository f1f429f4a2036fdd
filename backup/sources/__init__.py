"""Sources: one package per kind, all of the ``Source`` shape (base.py), registered here by kind.

A kind's module is imported when a source of that kind is made (or its shard merge is needed): a
backup of etcd does not pay for boto3 and clickhouse-driver at start-up.

``SOURCES``: the class of each kind. ``PART_MERGES``: the shard merge of each kind that can be
sharded, ``merge(Merging) -> SnapshotOutcome`` (backup/sources/parts.py), which
``backup.jobs.merge_parts`` calls without naming a kind.

``PRUNE_HOOKS``: the prune hook of each kind that keeps data in the repository's store outside chunks
and manifests (``backup.repository.maintenance.PruneHook``; ClickHouse: its native backups), which the
caller of ``prune`` hands it (``prune_hooks()``), so that the repository imports no source."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backup.sources.base import SnapshotOutcome, Source
from backup.sources.parts import Merging
from policies.errors import ConfigError, ConfigIssue
from policies.model import SourceSettings

if TYPE_CHECKING:
    from backup.repository.maintenance import PruneHook

SOURCES: dict[str, str] = {
    "etcd": "backup.sources.etcd.source:EtcdSource",
    "clickhouse": "backup.sources.clickhouse.source:ClickHouseSource",
    "s3": "backup.sources.s3.source:S3Source",
}
PART_MERGES: dict[str, str] = {
    "s3": "backup.sources.s3.merge:merge_parts",
    "clickhouse": "backup.sources.clickhouse.merge:merge_parts",
}
PRUNE_HOOKS: dict[str, str] = {
    "clickhouse": "backup.sources.clickhouse.chain:NativeBackupPruning",
}


def make_source(name: str, settings: SourceSettings) -> Source:
    """The source plug-in for ``settings.kind``; an unknown kind lists the known ones."""
    try:
        factory = SOURCES[settings.kind]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise ConfigError(
            "", [ConfigIssue(f"sources.{name}.kind", f"unknown kind '{settings.kind}'; known: {known}")]
        ) from None
    source: Source = _resolve(factory)(name, settings)
    return source


def part_merge(kind: str) -> Callable[[Merging], SnapshotOutcome] | None:
    """The shard merge of ``kind``, or None for a kind that cannot be sharded."""
    merge = PART_MERGES.get(kind)
    return None if merge is None else _resolve(merge)


def prune_hooks() -> dict[str, PruneHook]:
    """The prune hook of every kind that has one, by kind: what ``prune`` is given."""
    return {kind: _resolve(hook)() for kind, hook in PRUNE_HOOKS.items()}


def _resolve(name: str) -> Any:
    """The object ``name`` ('package.module:attribute') names, its module imported now."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)
