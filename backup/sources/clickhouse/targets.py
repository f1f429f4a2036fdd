"""Where a ClickHouse snapshot can be restored to, parsed from ``lifeboat restore``'s options, and
the refusal of a target that is the source itself."""

from __future__ import annotations

from dataclasses import dataclass

from backup.repository.manifest import SnapshotHeader
from backup.sources.base import RestoreOptions, flag_of
from backup.sources.clickhouse.client import Endpoint
from backup.sources.clickhouse.kind import KIND
from backup.sources.clickhouse.sql import (
    database_selected,
)
from policies.errors import RestoreError, RestoreUsageError
from policies.model import ClickHouseSettings

DEFAULT_PORT = 9000


DEFAULT_HTTP_PORT = 8123


_USAGE = "use --to-host H [--to-port P] [--to-http-port P] --to-database DB [--tables GLOB]..."


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "ip6-localhost"})


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where a restore goes: a server, a database on it (``endpoint.database``), optional table globs."""

    endpoint: Endpoint
    tables: tuple[str, ...] = ()
    credentials: str = ""  # how the target is reached, for the plan (never the password itself)

    @property
    def database(self) -> str:
        return self.endpoint.database

    def describe(self) -> str:
        return f"clickhouse://{self.endpoint.host}:{self.endpoint.port}/{self.database}"


def target_from_options(options: RestoreOptions, settings: ClickHouseSettings, *, password: str) -> ClickHouseTarget:
    """The target ``options`` name; raises RestoreError for options of other kinds, missing ones, and a
    target that is the source itself (same server, a database the source backs up).

    The target is reached with the source's user and ``password`` unless ``to_user`` / ``to_password``
    (set by drills for their scratch servers, not CLI options) say otherwise."""
    foreign = options.foreign(KIND.target_options)
    if foreign:
        named = ", ".join(map(flag_of, foreign))
        verb = "does" if len(foreign) == 1 else "do"
        raise RestoreUsageError(f"{named} {verb} not apply to a ClickHouse source; {_USAGE}")
    if not options.get("to_host") or not options.get("to_database"):
        raise RestoreUsageError(f"a ClickHouse restore needs --to-host and --to-database; {_USAGE}")
    endpoint = Endpoint(
        host=options.get("to_host"),
        port=options.get("to_port") or DEFAULT_PORT,
        http_port=options.get("to_http_port") or DEFAULT_HTTP_PORT,
        user=options.get("to_user") or settings.user,
        password=options.get("to_password") if options.get("to_password") is not None else password,
        secure=settings.secure,
        database=options.get("to_database"),
        timeout=settings.timeout.total_seconds(),
    )
    if same_server(settings, endpoint) and database_selected(options.get("to_database"), settings.databases):
        raise RestoreError(_source_refusal(endpoint, "the source backs up that database"))
    own = options.get("to_user") is not None or options.get("to_password") is not None
    credentials = f"user {endpoint.user} with {'the target' if own else 'the source'}'s password"
    return ClickHouseTarget(endpoint, tuple(options.get("tables") or ()), credentials)


def same_server(settings: ClickHouseSettings, endpoint: Endpoint) -> bool:
    """Whether ``endpoint`` is the source's server (loopback names count as one host)."""
    if _host_key(settings.host) != _host_key(endpoint.host):
        return False
    return endpoint.port == settings.port or endpoint.http_port == settings.http_port


def _host_key(host: str) -> str:
    host = host.strip().strip("[]").lower()
    return "loopback" if host in _LOOPBACK else host


def _source_refusal(endpoint: Endpoint, why: str) -> str:
    return (
        f"refusing to restore into {endpoint.describe()} database {endpoint.database}: that is the source itself "
        f"({why}); choose another --to-database or a scratch server"
    )


def refuse_source_target(settings: ClickHouseSettings, header: SnapshotHeader, target: ClickHouseTarget) -> None:
    """A snapshot's own databases on the source server are never a target (the policy may have
    changed since the snapshot was taken, so this checks the snapshot's list too)."""
    if same_server(settings, target.endpoint) and target.database in header.meta.get("databases", []):
        raise RestoreError(_source_refusal(target.endpoint, f"snapshot {header.id} was taken from it"))
