"""Sources: one module per kind, all of the ``Source`` shape (base.py), registered here by kind.

A kind's module is imported when a source of that kind is made: a backup of etcd does not pay for
boto3 and clickhouse-driver at start-up."""

from __future__ import annotations

import importlib

from backup.sources.base import Source
from policies.errors import ConfigError, ConfigIssue
from policies.model import SourceSettings

SOURCES: dict[str, str] = {
    "etcd": "backup.sources.etcd:EtcdSource",
    "clickhouse": "backup.sources.clickhouse:ClickHouseSource",
    "s3": "backup.sources.s3.source:S3Source",
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
    module, _, attribute = factory.partition(":")
    source: Source = getattr(importlib.import_module(module), attribute)(name, settings)
    return source
