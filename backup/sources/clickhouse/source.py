"""The ClickHouse source (DESIGN section 4): the feature store's databases, logical or native.

Lifeboat runs outside the database hosts: it reaches a server over the network only (native
protocol through clickhouse-driver for control and metadata, HTTP for table data) and never touches
its filesystem.

* ``snapshot``: discover the selected databases and tables (catalog), pick the strategy
  (``auto``: native where the server has BACKUP and the repository is in S3, else logical), take it
  (logical / native), and record a fingerprint per table and partition that
  describes exactly what was taken.
* ``restore``: recreate the tables renamed into another database of any server, load them, verify
  (restore).
* ``verify``: fingerprint a restored database and compare it with the snapshot's.

The modules beside this one: sql (quoting, filters, engines, row hashes: pure),
ddl (CREATE rewriting: pure), fingerprint (prints and comparison: pure),
client (SQL and HTTP I/O).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import structlog

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter
from backup.sources.base import (
    Progress,
    RestoreOptions,
    RestoreResult,
    SnapshotOutcome,
    Verdict,
    Verification,
    consistency_summary,
)
from backup.sources.clickhouse.catalog import (
    Catalog,
    database_exists,
    ddl_settings,
    discover,
    existing_tables,
    held_back,
    live_rows,
    read_definitions,
)
from backup.sources.clickhouse.chain import NativeBackupInfo
from backup.sources.clickhouse.client import (
    ClickHouseError,
    Connections,
    Connector,
    Endpoint,
    HttpChannel,
    driver_connector,
)
from backup.sources.clickhouse.fingerprint import (
    Definition,
    TableKey,
    TablePrint,
    changed_fraction,
    fingerprint_document,
    table_prints,
)
from backup.sources.clickhouse.loaders import LOADERS, LoadJob, insert_settings_of
from backup.sources.clickhouse.logical import LISTED_EXPORTS, LogicalBackup, table_entry
from backup.sources.clickhouse.native import (
    BACKUP_MARKER,
    NativeBackup,
    S3Destination,
    plan_native_backup,
    s3_destination,
)
from backup.sources.clickhouse.restore import (
    Footprint,
    RestorePlan,
    build_plan,
    ddl_settings_for,
    load_everything,
    next_steps,
    plan_lines,
    prepare_target,
    undo,
)
from backup.sources.clickhouse.sql import HASH_METHOD, StrategyChoice, TableRole, choose_strategy, parse_version
from backup.sources.clickhouse.targets import ClickHouseTarget, refuse_source_target, target_from_options
from backup.sources.clickhouse.verify import failure_message, verify_target
from policies.durations import format_duration, human_duration
from policies.errors import IntegrityError, RestoreError, SourceError, VerificationFailed
from policies.model import ClickHouseSettings, reveal

log = structlog.get_logger(__name__)

__all__ = ["ClickHouseSource", "ClickHouseTarget"]


@dataclass(frozen=True)
class SnapshotJob:
    """Everything one snapshot's strategy needs."""

    source: str
    settings: ClickHouseSettings
    writer: SnapshotWriter
    previous: SnapshotHeader | None
    progress: Progress | None
    connections: Connections
    catalog: Catalog
    destination: S3Destination | None
    choice: StrategyChoice
    definitions: tuple[Definition, ...] = ()  # of the catalog's tables, read with it
    ddl_settings: Mapping[str, str] | None = None  # the session's settings its CREATEs may need


class ClickHouseSource:
    """Databases of one ClickHouse server. ``connect`` makes the SQL connections (clickhouse-driver
    by default; the tests pass a chdb one for the native strategy)."""

    kind: ClassVar[str] = "clickhouse"

    def __init__(self, name: str, settings: ClickHouseSettings, *, connect: Connector = driver_connector) -> None:
        self.name = name
        self.settings = settings
        self._connect = connect

    @property
    def endpoint(self) -> Endpoint:
        settings = self.settings
        return Endpoint(
            host=settings.host,
            port=settings.port,
            http_port=settings.http_port,
            user=settings.user,
            password=reveal(settings.password) or "",
            secure=settings.secure,
            timeout=settings.timeout.total_seconds(),
        )

    # ---- snapshot ---------------------------------------------------------------------------

    def snapshot(
        self, writer: SnapshotWriter, previous: SnapshotHeader | None, *, progress: Progress | None = None
    ) -> SnapshotOutcome:
        """Back up the selected tables into ``writer``; raises SourceError (nothing is committed then)."""
        endpoint = self.endpoint
        with Connections(self._connect, endpoint) as connections:
            catalog = discover(connections, self.settings, where=endpoint.describe())
            destination = s3_destination(writer.repository, self.settings.native_endpoint_url)
            choice = choose_strategy(self.settings.strategy, parse_version(catalog.version), destination is not None)
            if writer.shard is not None:  # one part of a sharded run (backup/repository/parts.py): its tables
                if choice.strategy != "logical":
                    raise SourceError(f"source '{self.name}': only strategy logical can be sharded, not {choice.strategy}")
                shard = writer.shard  # a materialized view's storage table goes with the view
                tables = tuple(t for t in catalog.tables if shard.owns(f"{t.database}.{t.owner or t.name}"))
                catalog = replace(catalog, tables=tables)
            log.info(
                "clickhouse.snapshot", source=self.name, strategy=choice.strategy, why=choice.why, tables=len(catalog.tables)
            )
            definitions = read_definitions(connections, catalog.databases, [table.key for table in catalog.tables])
            job = SnapshotJob(
                self.name,
                self.settings,
                writer,
                previous,
                progress,
                connections,
                catalog,
                destination,
                choice,
                tuple(definitions),
                ddl_settings(connections),
            )
            return SNAPSHOTS[choice.strategy](job)

    def census(self) -> dict[str, Any]:
        """Rows per selected data table now (``catalog.live_rows``: system.parts, read-only), keyed
        like a snapshot's census. Raises SourceError (ClickHouseError) when the server cannot be read."""
        endpoint = self.endpoint
        with Connections(self._connect, endpoint) as connections:
            catalog = discover(connections, self.settings, where=endpoint.describe())
            rows = live_rows(connections, catalog.tables)
        tables = {table.display: {"rows": rows[table.key]} for table in catalog.tables if table.key in rows}
        return {"totals": {"rows": sum(rows.values())}, "tables": tables}

    # ---- restore ----------------------------------------------------------------------------

    def parse_target(self, options: RestoreOptions) -> ClickHouseTarget:
        """``--to-host H [--to-port P] [--to-http-port P] --to-database DB [--tables GLOB]...``; the
        target is reached with the source's user and password (drills pass their scratch server's
        as ``to_user`` / ``to_password``). Raises RestoreError."""
        return target_from_options(options, self.settings, password=reveal(self.settings.password) or "")

    def restore(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: ClickHouseTarget,
        *,
        options: RestoreOptions,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Recreate the snapshot's tables in ``target``, load them and verify them; raises
        VerificationFailed (verified: the copy differs), RestoreError (refused target, failed load)
        or IntegrityError (damaged data). A copy that could not be verified (a snapshot older than
        recorded definitions, partitions that changed while backed up) is returned with its
        ``figures["verification"]`` saying so, never as verified."""
        started = time.monotonic()
        refuse_source_target(self.settings, header, target)
        plan = build_plan(header, repository.entries(header), target.tables)
        lines = plan_lines(plan, target, header)
        figures = {**_plan_figures(plan), "target_credentials": target.credentials}
        if options.dry_run:
            lines.append(self._target_state(target))
            return RestoreResult(
                self.name, header.id, target.describe(), True, time.monotonic() - started, 0, figures, lines
            )
        verification = self._load_and_verify(repository, header, target, plan, options, progress)
        figures["verification"] = {"verdict": str(verification.verdict), "message": verification.message}
        if verification.verdict is Verdict.MISMATCH:  # checked and wrong: a FAIL, not "could not verify"
            raise VerificationFailed(failure_message(verification, target), verification.differences)
        if verification.ok:
            lines.append(f"verified: {verification.message}")
        else:  # written, but not proven: the CLI exits 3 and a drill's verify step says ERROR
            lines.append(f"NOT VERIFIED: {verification.message}")
            log.warning("clickhouse.restore_unverified", source=self.name, snapshot=header.id, reason=verification.message)
        size = sum(plan.size(table) for table in plan.tables)
        log.info(
            "clickhouse.restored", source=self.name, snapshot=header.id, target=target.describe(), tables=len(plan.tables)
        )
        steps = next_steps(plan, target.database)
        return RestoreResult(
            self.name, header.id, target.describe(), False, time.monotonic() - started, size, figures, lines, steps
        )

    def _load_and_verify(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: ClickHouseTarget,
        plan: RestorePlan,
        options: RestoreOptions,
        progress: Progress | None,
    ) -> Verification:
        footprint = Footprint(target.database)
        try:
            with Connections(self._connect, target.endpoint.using("default")) as admin:
                prepare_target(admin, plan, target, yes=options.yes, footprint=footprint)
                insert_settings = insert_settings_of(admin)
                create_settings = ddl_settings_for(admin, plan)
            with Connections(self._connect, target.endpoint) as sql:
                job = LoadJob(self.settings, repository, header, plan, target, sql, insert_settings, progress)
                loader = LOADERS[plan.strategy](job)
                load_everything(
                    sql,
                    plan,
                    loader,
                    target.database,
                    settings=create_settings,
                    footprint=footprint,
                    workers=self.settings.parallel,
                )
        except Exception as exc:
            raise self._undone(exc, target, footprint) from exc
        try:
            with Connections(self._connect, target.endpoint) as sql:
                return verify_target(sql, header, target, parallel=self.settings.parallel)
        except SourceError as exc:
            raise RestoreError(f"restore into {target.describe()} failed: {exc}") from exc

    def _undone(self, exc: Exception, target: ClickHouseTarget, footprint: Footprint) -> Exception:
        """The error to raise for ``exc``, which failed a restore midway, once what the restore created
        is removed (undo): it says what happened and what is left."""
        with Connections(self._connect, target.endpoint.using("default")) as admin:
            note = undo(admin, footprint, target.describe())
        log.warning("clickhouse.restore_failed", target=target.describe(), error=str(exc), undone=note)
        if isinstance(exc, SourceError):
            return RestoreError(f"restore into {target.describe()} failed: {exc}{note}")
        if not note:  # refused before anything was done (a non-empty target without --yes)
            return exc
        if type(exc) in (RestoreError, IntegrityError):
            return type(exc)(f"{exc}{note}")
        exc.add_note(f"restore into {target.describe()} failed{note}")
        return exc

    def _target_state(self, target: ClickHouseTarget) -> str:
        """One plan line on the target as it is now (a dry run only reads)."""
        try:
            with Connections(self._connect, target.endpoint.using("default")) as sql:
                if not database_exists(sql, target.database):
                    return f"database {target.database} does not exist yet: it will be created"
                count = len(existing_tables(sql, [target.database]))
        except ClickHouseError as exc:
            return f"target not checked: {exc}"
        if count:
            return f"database {target.database} holds {count} tables: refused without --yes (same-named tables are replaced)"
        return f"database {target.database} exists and is empty"

    # ---- verify -----------------------------------------------------------------------------

    def verify(
        self, header: SnapshotHeader, target: ClickHouseTarget, *, repository: Repository | None = None
    ) -> Verification:
        """Fingerprint ``target`` and compare it with ``header``'s; MISMATCH names tables and partitions,
        UNVERIFIED says why nothing could be compared. Never raises for what it finds."""
        try:
            with Connections(self._connect, target.endpoint.using("default")) as sql:
                return verify_target(sql, header, target, parallel=self.settings.parallel)
        except ClickHouseError as exc:
            return Verification(Verdict.UNVERIFIED, f"cannot verify {target.describe()}: {exc}")


# ---- strategies -----------------------------------------------------------------------------------


def _logical_snapshot(job: SnapshotJob) -> SnapshotOutcome:
    backup = LogicalBackup(
        connections=job.connections,
        channel=HttpChannel(job.connections.endpoint),
        writer=job.writer,
        previous=job.previous,
        parallel=job.settings.parallel,
        progress=job.progress,
    )
    result = backup.run(job.catalog)
    sizes: dict[TableKey, int] = {}
    for entry in result.entries:
        key = (entry.meta["database"], entry.meta["table"])
        sizes[key] = sizes.get(key, 0) + entry.size
    tally = result.tally
    _refuse_wide_window(job, result.consistency)
    figures = {
        "consistency_window_seconds": result.consistency["window_seconds"],
        "partitions_exported": tally.partitions,
        "partitions_reused": result.reused,
        "whole_tables_exported": tally.whole_tables,
        "retries": tally.retries,
        "unpinned": len(tally.unpinned),
        "uncounted": len(tally.uncounted),
        "exported": sorted(tally.exported)[:LISTED_EXPORTS],
    }
    meta = {"unpinned": result.tally.unpinned, "uncounted": tally.uncounted, "consistency": result.consistency}
    return _outcome(job, result.prints, sizes, figures=figures, meta=meta)


def _refuse_wide_window(job: SnapshotJob, consistency: Mapping[str, Any]) -> None:
    """A snapshot whose tables were read further apart than the policy's ``max_consistency_window``
    fails the backup (nothing is committed), naming the tables that moved."""
    limit = job.settings.max_consistency_window
    if limit is None or consistency["window_seconds"] <= limit.total_seconds():
        return
    apart = human_duration(consistency["window_seconds"])
    raise SourceError(
        f"source '{job.source}': the snapshot's tables were read {apart} apart, over "
        f"max_consistency_window {format_duration(limit)}; nothing was committed. Consistency window "
        f"{consistency_summary(consistency)}"
    )


def _native_snapshot(job: SnapshotJob) -> SnapshotOutcome:
    if job.destination is None:  # choose_strategy never picks native without one
        raise SourceError("strategy native needs an s3:// repository")
    store = job.writer.repository.store
    base = NativeBackupInfo.of(job.previous)
    base_exists = base is not None and store.exists(f"{base.location}/{BACKUP_MARKER}")
    info = plan_native_backup(job.source, job.writer.id, job.previous, job.destination, base_exists=base_exists)
    result = NativeBackup(connections=job.connections, store=store, destination=job.destination, info=info).run(job.catalog)
    for table in job.catalog.tables:
        job.writer.add(table_entry(table))
    figures = {
        "native_base": info.base_snapshot or "none (full backup)",
        "partitions": sum(len(table.partitions) for table in result.prints.values()),
        "unpinned": len(result.unpinned),
    }
    meta = {"native": result.info.to_json() if result.info else None, "unpinned": result.unpinned}
    return _outcome(job, result.prints, None, figures=figures, meta=meta)


SNAPSHOTS: dict[str, Callable[[SnapshotJob], SnapshotOutcome]] = {
    "logical": _logical_snapshot,
    "native": _native_snapshot,
}


def _outcome(
    job: SnapshotJob,
    prints: Mapping[TableKey, TablePrint],
    sizes: Mapping[TableKey, int] | None,
    *,
    figures: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> SnapshotOutcome:
    """Fingerprint, census (totals for the anomaly guard), meta and figures of a snapshot.

    ``sizes`` are exported bytes per table (logical); a native backup has none, and its totals then
    hold rows only, so that a switch of strategy never looks like data loss to the anomaly guard."""
    catalog = job.catalog
    held = held_back(catalog.tables)
    rows = sum(table.rows for table in prints.values())
    totals: dict[str, int] = {"rows": rows}
    if sizes is not None:
        totals["bytes"] = sum(sizes.values())
    census: dict[str, Any] = {
        "totals": totals,
        "tables": {
            table.display: {
                "rows": prints[table.key].rows,
                "bytes": (sizes or {}).get(table.key, 0),
                "partitions": len(prints[table.key].partitions),
            }
            for table in catalog.tables
            if table.key in prints
        },
    }
    previous = job.previous
    if previous is not None and previous.fingerprint.get("method") == HASH_METHOD:
        changed = changed_fraction(table_prints(previous.fingerprint), prints)
        if changed is not None:
            census["changed_fraction"] = round(changed, 4)
    definitions = [table for table in catalog.tables if table.role is not TableRole.DATA]
    return SnapshotOutcome(
        fingerprint=fingerprint_document(
            prints.values(),
            server_version=catalog.version,
            strategy=job.choice.strategy,
            held_back=held,
            definitions=job.definitions,
        ),
        census=census,
        meta={
            "strategy": job.choice.strategy,
            "strategy_reason": job.choice.why,
            "server_version": catalog.version,
            "databases": list(catalog.databases),
            "definitions_only": [
                {"table": table.display, "engine": table.engine, "reason": table.reason} for table in definitions
            ],
            "held_back": [{"table": ".".join(key), "reason": why} for key, why in sorted(held.items())],
            "ddl_settings": dict(job.ddl_settings or {}),
            **meta,
        },
        figures={
            "strategy": job.choice.strategy,
            "server_version": catalog.version,
            "tables": len(prints),
            "definitions_only": len(definitions),
            "rows": rows,
            **figures,
        },
    )


def _plan_figures(plan: RestorePlan) -> dict[str, Any]:
    return {
        "tables": len(plan.tables),
        "partitions": sum(len(plan.entries.get(table.key, [])) for table in plan.tables),
        "rows": sum(plan.rows(table) for table in plan.tables),
        "strategy": plan.strategy,
    }
