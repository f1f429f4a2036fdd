"""ClickHouse's preflight (``lifeboat doctor``): the server answers the configured user, its version
and the strategy that follows (native ``BACKUP`` from 22.8, and where it would write), each database
readable, the grants where the server has ``SHOW GRANTS``, and a readonly profile's limits that an
export could not lift."""

from __future__ import annotations

from functools import partial

from backup.doctor import DOCTOR_TIMEOUT, Concern, Finding, Problem, Status, probe
from backup.sources.clickhouse.client import UNKNOWN_DATABASE, ClickHouseError, DriverExecutor, Endpoint
from backup.sources.clickhouse.logical import EXPORT_SETTINGS
from backup.sources.clickhouse.sql import choose_strategy, parse_version, quote_ident, quote_string
from policies.errors import SourceError
from policies.model import ClickHouseSettings, reveal
from policies.model import Repository as RepositorySettings

GRANTS_SINCE = (20, 5)  # SHOW GRANTS (RBAC)
ACCESS_DENIED = 291  # "Access denied to database" (users.xml allow_databases)


def doctor(name: str, settings: ClickHouseSettings, *, repository: RepositorySettings) -> list[Finding]:
    """Every check of ClickHouse source ``name``; never raises."""
    target = f"source {name}"
    endpoint = Endpoint(
        host=settings.host,
        port=settings.port,
        http_port=settings.http_port,
        user=settings.user,
        password=reveal(settings.password) or "",
        secure=settings.secure,
        database="system",  # a user may be allowed no other
        timeout=DOCTOR_TIMEOUT,
    )
    sql = DriverExecutor(endpoint)
    try:
        found: dict[str, str] = {}

        def connect() -> str:
            found["version"] = str(sql.execute("SELECT version()")[0][0])
            return f"{endpoint.describe()} answers user '{settings.user}': ClickHouse {found['version']}"

        first = probe(target, "connect, version", connect, fix=f"check sources.{name}.host / port / user / password")
        if first.status is Status.FAIL:
            return [first]
        version = parse_version(found["version"])
        findings = [first, probe(target, "strategy", lambda: _strategy(name, settings, version, repository))]
        findings += [
            probe(target, f"read {database}", partial(_database, sql, database, name)) for database in settings.databases
        ]
        findings.append(probe(target, "profile limits", lambda: _limits(sql, settings.user)))
        if version[:2] >= GRANTS_SINCE:
            findings.append(probe(target, "grants", lambda: _grants(sql, settings.databases)))
        return findings
    finally:
        sql.close()


def _strategy(name: str, settings: ClickHouseSettings, version: tuple[int, ...], repository: RepositorySettings) -> str:
    try:
        choice = choose_strategy(settings.strategy, version, repository.scheme == "s3")
    except SourceError as exc:
        raise Problem(str(exc), f"set sources.{name}.strategy: logical (or auto)") from None
    where = ""
    if choice.strategy == "native":
        through = settings.native_endpoint_url or repository.s3.endpoint_url or "AWS S3"
        where = f"; the server writes into {repository.url} through {through}"
    return f"{choice.strategy} ({choice.why}){where}"


def _database(sql: DriverExecutor, database: str, name: str) -> str:
    try:
        sql.execute(f"USE {quote_ident(database)}")  # checks the access right (SHOW TABLES does not on 18.16)
        tables = sql.execute(f"SHOW TABLES FROM {quote_ident(database)}")
    except ClickHouseError as exc:
        if exc.code == UNKNOWN_DATABASE:
            raise Problem(f"database {database} does not exist", f"create it, or fix sources.{name}.databases") from None
        if exc.code == ACCESS_DENIED:
            raise Problem(
                f"the user may not read database {database}: {exc}",
                f"allow the user database {database} (users.xml allow_databases, or GRANT SELECT ON {database}.*)",
            ) from None
        raise Problem(str(exc), f"let the user read database {database}") from None
    for (table,) in tables[:1]:  # the first table read with no rows: the read right, cheaply
        try:
            sql.execute(f"SELECT * FROM {quote_ident(database)}.{quote_ident(str(table))} LIMIT 0")
        except ClickHouseError as exc:
            raise Problem(
                f"the user may not read {database}.{table}: {exc}", f"GRANT SELECT ON {database}.* to the user"
            ) from None
    return f"{len(tables)} tables readable"


def _limits(sql: DriverExecutor, user: str) -> str:
    names = ", ".join(quote_string(setting) for setting in [*EXPORT_SETTINGS, "readonly"])
    current = {str(n): str(v) for n, v in sql.execute(f"SELECT name, value FROM system.settings WHERE name IN ({names})")}
    limits = {n: v for n, v in EXPORT_SETTINGS.items() if n in current and current[n] != v}
    readonly = current.get("readonly", "0")
    if limits and readonly == "1":
        shown = ", ".join(f"{n}={current[n]}" for n in sorted(limits))
        raise Problem(
            f"user '{user}' is readonly and its profile limits results ({shown}): exports larger than that fail the backup",
            "give the backup user a profile without result limits, or readonly = 2 so that an export can lift them",
        )
    if readonly == "1":
        raise Concern(f"user '{user}' is readonly (readonly = 1): backups work; restores into this server with it do not")
    return f"readonly = {readonly}" + (f"; limits the export lifts: {', '.join(sorted(limits))}" if limits else "")


def _grants(sql: DriverExecutor, databases: list[str]) -> str:
    grants = [str(row[0]) for row in sql.execute("SHOW GRANTS")]
    text = " ".join(grants).upper()
    if "ALL" in text or "SELECT ON *.*" in text:
        return "; ".join(grants)[:300]
    missing = [db for db in databases if f"ON {db.upper()}." not in text]
    if missing:
        raise Problem(
            f"SHOW GRANTS names no right on {', '.join(missing)}",
            "; ".join(f"GRANT SELECT, SHOW ON {db}.* TO the backup user" for db in missing),
        )
    return "; ".join(grants)[:300]
