"""Sources: one package per kind, all of the ``Source`` shape (base.py), registered here by kind.

A kind's module is imported when a source of that kind is made (or its shard merge or prune hook is
asked for): a backup of etcd does not pay for boto3 and clickhouse-driver at start-up."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from backup.sources.base import Source
from policies.errors import ConfigError, ConfigIssue
from policies.model import SourceSettings

if TYPE_CHECKING:
    from backup.repository.maintenance import PruneHook
    from backup.sources.parts import PartMerge

SOURCES: dict[str, str] = {
    "etcd": "backup.sources.etcd:EtcdSource",
    "clickhouse": "backup.sources.clickhouse.source:ClickHouseSource",
    "s3": "backup.sources.s3:S3Source",
}

PART_MERGES: dict[str, str] = {
    "s3": "backup.jobs:_merge_s3",  # backup.sources.s3.merge:merge_parts once the s3 package lands (r14-s3)
    "clickhouse": "backup.sources.clickhouse.merge:merge_parts",
}
"""The shard merge of each kind that shards (``backup.jobs.merge_parts``; backup/sources/parts.py)."""

PRUNE_HOOKS: dict[str, str] = {
    "clickhouse": "backup.sources.clickhouse.chain:NativeBackupPruning",
}
"""Each kind that keeps data in the repository's store outside chunks and manifests: the class of its
``PruneHook`` (``backup.repository.maintenance.prune``)."""


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


def part_merge(kind: str) -> PartMerge | None:
    """The shard merge of ``kind``; None for a kind that does not shard."""
    target = PART_MERGES.get(kind)
    if target is None:
        return None
    merge: PartMerge = _resolve(target)
    return merge


def prune_hooks() -> dict[str, PruneHook]:
    """Every registered kind's prune hook, by kind (what ``prune`` is given)."""
    return {kind: _resolve(target)() for kind, target in PRUNE_HOOKS.items()}


def _resolve(target: str) -> Any:
    """``module:attribute`` imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
