"""``lifeboat backup run`` and ``lifeboat restore``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import structlog

from backup.jobs import BackupResult, run_restore
from backup.sources.base import RestoreOptions, RestoreResult
from lifeboat.context import EXIT_FAILED, Session, human_bytes, pass_session, print_json
from lifeboat.operations import open_operations
from lifeboat.progress import terminal_progress
from policies.errors import LifeboatError

log = structlog.get_logger(__name__)


@click.group()
def backup() -> None:
    """Take snapshots."""


@backup.command("run")
@click.option("--source", "names", multiple=True, metavar="NAME", help="Back up this source (repeatable); default: all.")
@click.option("--json", "as_json", is_flag=True, help='Print {"snapshots": [...], "errors": [...]} on stdout.')
@pass_session
def backup_run(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Snapshot sources into the repository (created on first use). Exit 1 if any source failed.

    Each source's run is recorded in the state DB under that source's lock (which `lifeboat serve`
    takes too); a failure is notified once per incident to the notifiers listening to backup-failure."""
    policy = session.policy()
    unknown = sorted(set(names) - policy.sources.keys())
    if unknown:
        raise click.UsageError(f"unknown source {', '.join(unknown)}; defined: {', '.join(sorted(policy.sources))}")
    repository = session.repository(create=True)
    results: list[BackupResult] = []
    errors: list[dict[str, str]] = []
    with open_operations(policy, redact=session.redactor.text) as operations:
        for name in names or tuple(policy.sources):
            try:
                with terminal_progress(f"backup {name}") as progress:
                    results.append(operations.backup(name, repository=lambda: repository, progress=progress))
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
    if errors:
        click.get_current_context().exit(EXIT_FAILED)


def _backup_line(result: BackupResult) -> str:
    item = result.as_dict()
    figures = ", ".join(
        f"{key.replace('_', ' ')} {value}" for key, value in result.figures.items() if not isinstance(value, dict | list)
    )
    line = (
        f"{item['id']}: {item['status']}, read {human_bytes(item['bytes_read'])}, "
        f"stored {human_bytes(item['bytes_stored'])} new, {item['seconds']:.1f}s" + (f"; {figures}" if figures else "")
    )
    if result.anomalies:
        line += "\n  WARNING: suspicious snapshot: " + "; ".join(result.anomalies)
    return line


@click.command()
@click.argument("source")
@click.option("--snapshot", default="latest", show_default=True, help="A snapshot id, or latest (good) snapshot.")
@click.option(
    "--at", "at_text", metavar="TIME", help="The newest good snapshot at or before TIME (ISO 8601, UTC if no zone)."
)
@click.option("--to-file", help="etcd: write the verified snapshot db to this file.")
@click.option("--to-data-dir", help="etcd: restore into this member data dir (etcdctl/etcdutl snapshot restore).")
@click.option("--name", help="etcd: member name for --to-data-dir.")
@click.option("--initial-cluster", help="etcd: e.g. n1=https://10.0.0.11:2380,n2=...")
@click.option("--initial-advertise-peer-urls", help="etcd: this member's peer URLs.")
@click.option("--to-host", help="ClickHouse: server to restore into.")
@click.option("--to-port", type=int, help="ClickHouse: native port (default 9000).")
@click.option("--to-http-port", type=int, help="ClickHouse: HTTP port (default 8123).")
@click.option("--to-database", help="ClickHouse: database to create the tables in.")
@click.option("--tables", multiple=True, metavar="GLOB", help="ClickHouse: only these tables (repeatable).")
@click.option("--to-endpoint", help="S3: endpoint URL of the target.")
@click.option("--to-bucket", help="S3: target bucket.")
@click.option("--to-prefix", help="S3: key prefix in the target bucket.")
@click.option("--to-dir", help="S3: write objects as files under this directory.")
@click.option("--prefix", help="S3: only objects whose key starts with this.")
@click.option("--in-place", is_flag=True, help="S3: allow restoring into the source bucket itself (with --yes).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Allow writing into a non-empty target.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_session
def restore(session: Session, source: str, at_text: str | None, as_json: bool, **target: Any) -> None:
    """Restore a snapshot of SOURCE into a target; refuses a non-empty target without --yes."""
    policy = session.policy()
    if source not in policy.sources:
        raise click.UsageError(f"unknown source '{source}'; defined: {', '.join(sorted(policy.sources))}")
    options = RestoreOptions(at=_parse_time(at_text) if at_text else None, **target)
    repository = session.repository()
    with terminal_progress(f"restore {source}") as progress:
        result = run_restore(
            repository, source, policy.sources[source], options, stale_after=session.stale_after, progress=progress
        )
    if as_json:
        print_json(result.as_dict())
    else:
        _print_restore(result)


def _print_restore(result: RestoreResult) -> None:
    head = "plan" if result.dry_run else "restored"
    click.echo(f"{head}: {result.source} snapshot {result.snapshot} -> {result.target}")
    for line in result.plan:
        click.echo(f"  {line}")
    if not result.dry_run:
        click.echo(f"  {human_bytes(result.bytes)} in {result.seconds:.1f}s")
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
