"""Sources: one module per kind, all of the ``Source`` shape (base.py), registered here by kind."""

from __future__ import annotations

from backup.sources.base import Source
from backup.sources.clickhouse import ClickHouseSource
from backup.sources.etcd import EtcdSource
from backup.sources.s3 import S3Source
from policies.errors import ConfigError, ConfigIssue
from policies.model import SourceSettings

SOURCES: dict[str, type[EtcdSource] | type[ClickHouseSource] | type[S3Source]] = {
    "etcd": EtcdSource,
    "clickhouse": ClickHouseSource,
    "s3": S3Source,
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
    return factory(name, settings)  # type: ignore[arg-type]
