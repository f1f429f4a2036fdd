"""``lifeboat backup run`` (``--shard I/N --part-of RUN``: one shard's part), ``backup merge`` and
``lifeboat restore``."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import structlog

from backup.jobs import BackupResult, run_restore, run_restore_point, run_verify
from backup.repository.manifest import SnapshotHeader
from backup.repository.parts import PartOf, Shard
from backup.repository.repository import Repository
from backup.repository.restore_points import RestorePoint
from backup.sources import make_source, restore_flags
from backup.sources.base import RestoreOptions, RestoreResult, Verdict
from lifeboat.context import (
    EXIT_FAILED,
    EXIT_SUSPICIOUS,
    EXIT_UNVERIFIED,
    LATEST,
    Session,
    find_header,
    find_restore_point,
    json_option,
    pass_session,
    print_json,
    unknown_name,
)
from lifeboat.operations import Operations, open_operations
from lifeboat.progress import terminal_progress
from policies.durations import human_duration
from policies.errors import LifeboatError
from policies.model import SHARDABLE_KINDS, ClickHouseSettings, SourceSettings
from policies.sizes import human_bytes

log = structlog.get_logger(__name__)


@click.group()
def backup() -> None:
    """Take snapshots."""


@backup.command("run")
@click.option("--source", "names", multiple=True, metavar="NAME", help="Back up this source (repeatable); default: all.")
@click.option("--shard", metavar="I/N", help="Only shard I of N of the source (S3: buckets, ClickHouse: tables).")
@click.option("--part-of", "part_of", metavar="RUN", help="With --shard: the sharded run this part belongs to.")
@click.option(
    "--restore-point",
    "restore_point",
    metavar="NAME",
    help="Snapshot the member sources of this restore point together and commit the restore point.",
)
@json_option(help='Print {"snapshots": [...], "errors": [...]} on stdout (with --restore-point also "restore_point").')
@pass_session
def backup_run(
    session: Session,
    names: tuple[str, ...],
    shard: str | None,
    part_of: str | None,
    restore_point: str | None,
    as_json: bool,
) -> None:
    """Snapshot sources into the repository (made by `lifeboat repo init`; a missing one is exit 2).
    Exit 1 if any source failed; exit 4 if none failed but a snapshot is suspicious (its census
    shrank or changed past the source's anomaly guard), with a WARNING line on stderr.

    Each source's run is recorded in the state DB under that source's lock (which `lifeboat serve`
    takes too); a failure is notified once per incident to the notifiers listening to backup-failure.

    With --shard I/N --part-of RUN (one --source): take only that shard's share as a part of run RUN,
    which is no snapshot until `lifeboat backup merge --source NAME --part-of RUN` merges the parts of
    all N shards; parts are neither recorded nor notified, the merge is.

    With --restore-point NAME: the restore point's member sources, started together, then its
    manifest naming their snapshots ("complete"), or the members that failed ("failed", exit 1)."""
    policy = session.policy()
    if restore_point is not None:
        if names or shard or part_of:
            raise click.UsageError("--restore-point takes its member sources from the policy: not with --source or --shard")
        if restore_point not in policy.restore_points:
            raise unknown_name("restore point", restore_point, policy.restore_points)
        _run_restore_point(session, restore_point, as_json=as_json)
        return
    unknown = sorted(set(names) - policy.sources.keys())
    if unknown:
        raise unknown_name("source", ", ".join(unknown), policy.sources)
    part = _part(policy.sources, names, shard, part_of)

    def take(operations: Operations, name: str, repository: Repository) -> BackupResult:
        with terminal_progress(f"backup {name}") as progress:
            if part is not None:
                return operations.backup_part(name, part, repository=lambda: repository, progress=progress)
            return operations.backup(name, repository=lambda: repository, progress=progress)

    _run_and_report(session, names or tuple(policy.sources), take, as_json=as_json)


@backup.command("merge")
@click.option("--source", "name", required=True, metavar="NAME", help="The sharded source.")
@click.option("--part-of", "part_of", required=True, metavar="RUN", help="The run whose parts to merge.")
@json_option(help='Print {"snapshots": [...], "errors": [...]} on stdout.')
@pass_session
def backup_merge(session: Session, name: str, part_of: str, as_json: bool) -> None:
    """Merge the parts of sharded run RUN (`backup run --shard I/N --part-of RUN`, one per shard) into
    one snapshot of the source, recorded and notified as one backup run. Exit 1 when a shard left no
    part yet: nothing is committed, and the parts are kept for a merge once every shard has run (prune
    removes parts older than its grace period). After a merge, or one that failed otherwise, the run's
    parts are deleted."""
    policy = session.policy()
    if name not in policy.sources:
        raise unknown_name("source", name, policy.sources)

    def take(operations: Operations, source: str, repository: Repository) -> BackupResult:
        return operations.merge_parts(source, part_of, repository=lambda: repository)

    _run_and_report(session, (name,), take, as_json=as_json)


def _part(
    sources: Mapping[str, SourceSettings], names: tuple[str, ...], shard: str | None, part_of: str | None
) -> PartOf | None:
    """The part that --shard and --part-of name, or None; UsageError for a combination that cannot work."""
    if shard is None and part_of is None:
        return None
    if shard is None or part_of is None:
        raise click.UsageError("--shard and --part-of go together")
    if len(names) != 1:
        raise click.UsageError("--shard takes exactly one --source")
    settings = sources[names[0]]
    if settings.kind not in SHARDABLE_KINDS:
        raise click.UsageError(f"source '{names[0]}' is {settings.kind}: only s3 and clickhouse sources can be sharded")
    if isinstance(settings, ClickHouseSettings) and settings.strategy == "native":
        raise click.UsageError(
            f"source '{names[0]}' has strategy native, one server-side BACKUP: only logical backups can be sharded"
        )
    try:
        return PartOf(part_of, Shard.parse(shard))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _run_and_report(
    session: Session,
    names: tuple[str, ...],
    take: Callable[[Operations, str, Repository], BackupResult],
    *,
    as_json: bool,
) -> None:
    """``take`` each source, then print the results (``--json``: the CLI contract's document); exit 1
    if any failed, else 4 if any snapshot is suspicious. A missing repository raises
    RepositoryNotFound before any source is read."""
    results: list[BackupResult] = []
    errors: list[dict[str, str]] = []
    with open_operations(session.policy(), redact=session.redactor.text) as operations:
        repository = session.repository()
        for name in names:
            try:
                results.append(take(operations, name, repository))
            except LifeboatError as exc:
                message = session.redactor.text(str(exc))
                log.error("backup.failed", source=name, error=message)
                errors.append({"source": name, "message": message})
    if as_json:
        print_json({"snapshots": [result.as_dict() for result in results], "errors": errors})
    else:
        for result in results:
            click.echo(_backup_line(result))
        for error in errors:
            click.echo(f"{error['source']}: FAILED: {error['message']}", err=True)
    _warn_and_exit(results, errors)


def _warn_and_exit(results: Sequence[BackupResult], errors: list[dict[str, str]]) -> None:
    """Name each suspicious snapshot on stderr; exit 1 when anything failed, else 4 when a snapshot
    is suspicious (the CLI contract of ``backup run``)."""
    suspicious = [result for result in results if result.anomalies]
    for result in suspicious:
        reasons = "; ".join(result.anomalies)
        click.echo(f"WARNING: suspicious snapshot {result.header.id} of {result.header.source}: {reasons}", err=True)
    if errors:
        click.get_current_context().exit(EXIT_FAILED)
    if suspicious:
        click.get_current_context().exit(EXIT_SUSPICIOUS)


def _run_restore_point(session: Session, name: str, *, as_json: bool) -> None:
    """``backup run --restore-point NAME``: the members' backups and the restore point, reported
    like ``backup run`` plus ``restore_point``; exit 1 when a member failed or the restore point
    could not be committed, else 4 when a member's snapshot is suspicious."""
    with open_operations(session.policy(), redact=session.redactor.text) as operations:
        repository = session.repository()
        run = operations.backup_restore_point(name, repository=lambda: repository)
    errors = [{"source": source, "message": message} for source, message in run.errors.items()]
    if run.commit_error is not None:
        errors.append({"source": f"restore point {name}", "message": run.commit_error})
    point = run.point.as_dict() if run.point is not None else None
    if as_json:
        document = {"snapshots": [result.as_dict() for result in run.results], "errors": errors, "restore_point": point}
        print_json(document)
    else:
        for result in run.results:
            click.echo(_backup_line(result))
        for error in errors:
            click.echo(f"{error['source']}: FAILED: {error['message']}", err=True)
        if run.point is not None:
            click.echo(restore_point_line(run.point))
    _warn_and_exit(run.results, errors)


def restore_point_line(point: RestorePoint) -> str:
    """One line of a restore point: id, status, spread and members."""
    spread = f"spread {human_duration(point.spread_seconds)}" if point.spread_seconds is not None else "no member"
    failed = f", failed: {', '.join(point.failed)}" if point.failed else ""
    members = ", ".join(member.snapshot or f"{member.source} (failed)" for member in point.members)
    return f"restore point {point.id}: {point.status}{failed}, {spread}; {members}"


def _backup_line(result: BackupResult) -> str:
    item = result.as_dict()
    figures = ", ".join(
        f"{key.replace('_', ' ')} {value}" for key, value in result.figures.items() if not isinstance(value, dict | list)
    )
    what = f"{item['id']} (part {item['shard']} of run {item['part_of']})" if "shard" in item else item["id"]
    line = (
        f"{what}: {item['status']}, read {human_bytes(item['bytes_read'])}, "
        f"stored {human_bytes(item['bytes_stored'])} new, {human_duration(item['seconds'])}"
        + (f"; {figures}" if figures else "")
    )
    return line


def target_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The snapshot choice and every registered kind's target options (backup/sources/<kind>/kind.py),
    for ``restore`` and ``verify``; each source refuses the options of other kinds."""
    for flag, kinds in reversed(restore_flags().items()):
        described = f"{', '.join(kinds)}: {flag.help}"
        if flag.is_flag:
            command = click.option(flag.option, flag.name, is_flag=True, help=described)(command)
        else:
            command = click.option(
                flag.option, flag.name, type=flag.type, multiple=flag.multiple, metavar=flag.metavar, help=described
            )(command)
    command = click.option(
        "--at", "at_text", metavar="TIME", help="The newest good snapshot at or before TIME (ISO 8601, UTC if no zone)."
    )(command)
    return click.option(
        "--snapshot",
        "snapshot",
        default=LATEST,
        show_default=True,
        help="A snapshot id or a unique start of one, or latest (the newest good snapshot); not with --at.",
    )(command)


def _options(
    session: Session, source: str, at_text: str | None, values: dict[str, Any]
) -> tuple[RestoreOptions, SnapshotHeader | None]:
    """The restore options of ``restore`` and ``verify``, checked in the order a user fixes them:
    the source name, --snapshot with --at, the target options (RestoreUsageError), then the snapshot
    an id or id prefix names (its header; None for latest, which the restore finds)."""
    policy = session.policy()
    if source not in policy.sources:
        raise unknown_name("source", source, policy.sources)
    ctx = click.get_current_context()
    if at_text is not None and ctx.get_parameter_source("snapshot") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --snapshot or --at, not both: --at picks the newest good snapshot at that time")
    common = {name: values.pop(name) for name in ("snapshot", "dry_run", "yes") if name in values}
    given = {name: value for name, value in values.items() if value not in (None, (), False)}
    options = RestoreOptions(at=_parse_time(at_text) if at_text else None, target=given, **common)
    make_source(source, policy.sources[source]).parse_target(options)  # option mistakes before any I/O
    if options.snapshot == LATEST:
        return options, None
    header = find_header(session.repository(), options.snapshot, source=source)
    return dataclasses.replace(options, snapshot=header.id), header


@click.command()
@click.argument("source", required=False)
@target_options
@click.option(
    "--restore-point",
    "restore_point",
    metavar="ID",
    help="Restore every member of this restore point (ID, a unique start, or latest) to its target; no SOURCE.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Allow writing into a non-empty target.")
@json_option(help="Print the result as JSON on stdout.")
@pass_session
def restore(
    session: Session, source: str | None, at_text: str | None, restore_point: str | None, as_json: bool, **values: Any
) -> None:
    """Restore a snapshot of SOURCE into a target; refuses a non-empty target without --yes.
    A suspicious snapshot (given by id) is restored with a WARNING line on stderr. Exit 3 when the
    copy was written but could not be verified (the plan says why).

    With --restore-point ID (and no SOURCE): every member of the restore point, each to the target
    options of its kind (etcd --to-file, ClickHouse --to-host/--to-database, S3 --to-dir/--to-bucket),
    checked all before anything is written; one plan with --dry-run."""
    if restore_point is not None:
        _restore_point(session, source, at_text, restore_point, values, as_json=as_json)
        return
    if source is None:
        raise click.UsageError("name the SOURCE to restore, or give --restore-point ID")
    options, header = _options(session, source, at_text, values)
    anomalies = _warn_if_suspicious(header)
    repository = session.repository()
    total = _restore_size(repository, source, options, header) if sys.stderr.isatty() and not options.dry_run else None
    with terminal_progress(f"restore {source}", total=total) as progress:
        result = run_restore(
            repository, source, session.policy().sources[source], options, stale_after=session.stale_after, progress=progress
        )
    if as_json:
        print_json({**result.as_dict(), "suspicious": anomalies is not None, "anomalies": anomalies or []})
    else:
        _print_restore(result)
    if result.figures.get("verification", {}).get("verdict") == Verdict.UNVERIFIED:
        click.get_current_context().exit(EXIT_UNVERIFIED)


def _restore_point(
    session: Session, source: str | None, at_text: str | None, point_id: str, values: dict[str, Any], *, as_json: bool
) -> None:
    """``restore --restore-point ID``: every member to its target; ``{"restore_point", "dry_run",
    "members": [restore results]}`` with --json; exit 3 when a member's copy could not be verified."""
    ctx = click.get_current_context()
    if source is not None:
        raise click.UsageError("--restore-point restores every member: give no SOURCE")
    if at_text is not None or ctx.get_parameter_source("snapshot") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--restore-point names each member's snapshot: not with --snapshot or --at")
    repository = session.repository()
    point = find_restore_point(repository, point_id)
    options = RestoreOptions.of(**{key: value for key, value in values.items() if key != "snapshot"})
    # A suspicious member (by the anomaly guard) is restored with a warning, as `restore SOURCE --snapshot ID` does.
    anomalies = {
        member.source: _warn_if_suspicious(repository.read_header(str(member.snapshot)))
        for member in point.members
        if member.snapshot
    }
    results = run_restore_point(repository, point, session.policy().sources, options, stale_after=session.stale_after)
    dry_run = options.dry_run
    if as_json:
        members = [
            {
                **result.as_dict(),
                "suspicious": anomalies[result.source] is not None,
                "anomalies": anomalies[result.source] or [],
            }
            for result in results
        ]
        print_json({"restore_point": point.id, "dry_run": dry_run, "members": members})
    else:
        click.echo(f"{'plan' if dry_run else 'restored'}: restore point {point.id} ({len(results)} members)")
        for result in results:
            _print_restore(result)
    verdicts = [result.figures.get("verification", {}).get("verdict") for result in results]
    if Verdict.UNVERIFIED in verdicts:
        ctx.exit(EXIT_UNVERIFIED)


@click.command()
@click.argument("source")
@target_options
@json_option(help="Print the comparison as JSON on stdout.")
@pass_session
def verify(session: Session, source: str, at_text: str | None, as_json: bool, **values: Any) -> None:
    """Compare a restored copy of SOURCE (the same target options as restore) with a snapshot and
    print every difference. Exit 0 match, 1 mismatch, 3 could not verify."""
    options, _ = _options(session, source, at_text, values)
    result = run_verify(
        session.repository(), source, session.policy().sources[source], options, stale_after=session.stale_after
    )
    found = result.verification
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(f"{found.verdict.value}: {result.source} snapshot {result.snapshot}: {found.message}")
        for difference in found.differences:
            click.echo(f"  {difference}")
    if found.verdict is not Verdict.MATCH:
        click.get_current_context().exit(EXIT_FAILED if found.verdict is Verdict.MISMATCH else EXIT_UNVERIFIED)


def _restore_size(repository: Repository, source: str, options: RestoreOptions, header: SnapshotHeader | None) -> int | None:
    """The size of the snapshot a restore will read (its progress bar's total), or None when it
    cannot be found: then the restore itself says why."""
    if header is not None:
        return header.size
    try:
        return repository.find_snapshot(source, at=options.at).size
    except LifeboatError:
        return None


def _warn_if_suspicious(header: SnapshotHeader | None) -> list[str] | None:
    """The anomalies of a suspicious snapshot, announced on stderr; None for a good one (latest is
    always a good one)."""
    if header is None or header.status != "suspicious":
        return None
    anomalies = [str(reason) for reason in header.meta.get("anomalies", [])]
    reasons = "; ".join(anomalies) or "no reason recorded"
    click.echo(f"WARNING: snapshot {header.id} is suspicious ({reasons}): restoring it anyway", err=True)
    return anomalies


def _print_restore(result: RestoreResult) -> None:
    head = "plan" if result.dry_run else "restored"
    click.echo(f"{head}: {result.source} snapshot {result.snapshot} -> {result.target}")
    for line in result.plan:
        click.echo(f"  {line}")
    if not result.dry_run:
        click.echo(f"  {human_bytes(result.bytes)} in {human_duration(result.seconds)}")
    if result.next_steps:
        click.echo("next steps:")
        for number, step in enumerate(result.next_steps, 1):
            click.echo(f"  {number}. {step}")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not an ISO 8601 time like 2026-11-28T02:00:00Z", param_hint="--at") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
