"""Sources: one package per kind, all of the ``Source`` shape (base.py), registered here by kind.

Each registry line names a kind's ``SourceKind`` (its package's ``kind.py``): the Source class, the
target options ``lifeboat restore`` and ``lifeboat verify`` take for it, its shard merge and its prune
hook. A kind's code is imported when it is used: a backup of etcd does not pay for boto3 and
clickhouse-driver at start-up.

The shard merge, ``merge(Merging) -> SnapshotOutcome`` (backup/sources/parts.py), is what
``backup.jobs.merge_parts`` calls without naming a kind. The prune hook
(``backup.repository.maintenance.PruneHook``; ClickHouse: its native backups) is handed to ``prune``
by its caller (``prune_hooks()``), so that the repository imports no source."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backup.sources.base import CheckRunner, RestoreFlag, SnapshotOutcome, Source, SourceKind
from backup.sources.parts import Merging
from policies.errors import ConfigError, ConfigIssue
from policies.model import SourceSettings

if TYPE_CHECKING:
    from backup.doctor import Finding
    from backup.repository.maintenance import PruneHook

SOURCES: dict[str, str] = {
    "etcd": "backup.sources.etcd.kind:KIND",
    "clickhouse": "backup.sources.clickhouse.kind:KIND",
    "s3": "backup.sources.s3.kind:KIND",
}


def source_kind(kind: str, *, where: str = "kind") -> SourceKind:
    """The declaration of ``kind``; an unknown kind is a ConfigError at ``where`` listing the known ones."""
    try:
        declared = SOURCES[kind]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise ConfigError("", [ConfigIssue(where, f"unknown kind '{kind}'; known: {known}")]) from None
    found: SourceKind = _resolve(declared)
    return found


def make_source(name: str, settings: SourceSettings) -> Source:
    """The source plug-in for ``settings.kind``; an unknown kind lists the known ones."""
    source: Source = _resolve(source_kind(settings.kind, where=f"sources.{name}.kind").source)(name, settings)
    return source


def part_merge(kind: str) -> Callable[[Merging], SnapshotOutcome] | None:
    """The shard merge of ``kind``, or None for a kind that cannot be sharded."""
    merge = source_kind(kind).part_merge
    return None if merge is None else _resolve(merge)


def prune_hooks() -> dict[str, PruneHook]:
    """The prune hook of every kind that has one, by kind: what ``prune`` is given."""
    kinds = [source_kind(kind) for kind in SOURCES]
    return {kind.name: _resolve(kind.prune_hook)() for kind in kinds if kind.prune_hook}


def source_doctor(kind: str) -> Callable[..., list[Finding]] | None:
    """The preflight checks of ``kind`` (``lifeboat doctor``), or None for a kind without any."""
    checks = source_kind(kind).doctor
    return None if checks is None else _resolve(checks)


def check_runner(kind: str) -> CheckRunner | None:
    """The drill check runner of ``kind`` (its ``checks.py``), or None for a kind without checks."""
    runner = source_kind(kind).checks
    return None if runner is None else _resolve(runner)()


def restore_flags() -> dict[RestoreFlag, list[str]]:
    """Every kind's restore target flags, each once, with the kinds that take it (registry order)."""
    flags: dict[RestoreFlag, list[str]] = {}
    for kind in SOURCES:
        for flag in source_kind(kind).restore_flags:
            flags.setdefault(flag, []).append(kind)
    return flags


def _resolve(name: str) -> Any:
    """The object ``name`` ('package.module:attribute') names, its module imported now."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)
