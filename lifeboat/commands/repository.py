"""Repository commands: ``repo init``, ``repo key add|list|remove``, ``snapshots list|show`` (``ls``, ``diff``:
inspect.py), ``check``, ``prune``, ``unlock``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from backup.repository import init_repository
from backup.repository.codec import new_key_file as new_key_file_
from backup.repository.codec import read_key_file
from backup.repository.key_rotation import add_key, remove_key, repository_keys
from backup.repository.locks import LockInfo, ThisHost, list_locks, remove_locks, stale_reason
from backup.repository.manifest import SnapshotHeader
from backup.sources.base import consistency_summary
from lifeboat.commands.inspect import snapshots_diff, snapshots_ls
from lifeboat.context import EXIT_FAILED, Session, find_header, json_option, pass_session, print_json, unknown_name
from lifeboat.operations import open_operations
from policies.durations import human_duration, parse_duration
from policies.sizes import human_bytes


@click.group()
def repo() -> None:
    """Create the configured repository; rotate its key."""


@repo.command("init")
@json_option(help='Print {"created", "encrypted", "key_file"} on stdout.')
@pass_session
def repo_init(session: Session, as_json: bool) -> None:
    """Create the configured repository (and its key file, when encryption is configured and it is
    absent). The only command that creates one: the others say how when it is missing (exit 2)."""
    repository = init_repository(session.policy().repository)
    repository.close()
    encryption = session.policy().repository.encryption
    if as_json:
        key_file = str(encryption.key_file) if encryption else None
        print_json({"created": repository.url, "encrypted": encryption is not None, "key_file": key_file})
        return
    how = (
        f"encrypted with {encryption.key_file}: keep a copy of that key outside this machine"
        if encryption
        else "unencrypted"
    )
    click.echo(f"created repository {repository.url} ({how})")


@repo.group("key")
def repo_key() -> None:
    """Rotate the repository key without rewriting data: the data key is wrapped by each key file
    (keys/<id>.json); add a new key file, point repository.encryption.key_file at it, remove the old."""


@repo_key.command("add")
@click.option(
    "--new-key-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new key file; generated (mode 0600) when it does not exist.",
)
@json_option(help='Print {"added": {"id", "created", "key_file"}, "migrated", "in_use"} on stdout.')
@pass_session
def repo_key_add(session: Session, new_key_file: Path, as_json: bool) -> None:
    """Let a new key file open the repository too (the configured key file must open it now). The
    first key add on a repository from before key objects migrates it in place (no data rewritten)."""
    repository = session.repository()
    repository_keys(repository)  # an unencrypted repository: say so before making a key file
    created = not new_key_file.exists()
    if created:
        new_key_file_(new_key_file)
    added, migrated = add_key(repository, read_key_file(new_key_file))
    if as_json:
        document = {**added.summary(), "key_file": str(new_key_file), "generated": created}
        print_json({"added": document, "migrated": migrated, "in_use": repository.key_id})
        return
    if migrated:
        click.echo(f"migrated {repository.url} to key objects: key {repository.key_id} is the configured key file")
    made = "generated " if created else ""
    click.echo(f"added key {added.id} ({made}{new_key_file}) to {repository.url}")
    click.echo(
        f"next: set repository.encryption.key_file to {new_key_file} in the policy, then retire the old key with "
        f"`lifeboat repo key remove {repository.key_id}`; keep a copy of the new key outside this machine"
    )


@repo_key.command("list")
@json_option(help='Print {"wrapped", "keys": [{"id", "created", "in_use"}]} on stdout.')
@pass_session
def repo_key_list(session: Session, as_json: bool) -> None:
    """The repository's keys: id, when it was added, which one the configured key file is."""
    repository = session.repository()
    listing = repository_keys(repository)
    if as_json:
        keys = [{**wrapped.summary(), "in_use": wrapped.id == listing.in_use} for wrapped in listing.keys]
        print_json({"wrapped": listing.wrapped, "keys": keys})
        return
    if not listing.wrapped:
        click.echo(
            f"{repository.url}: one key, the configured key file, which is the data key itself "
            "(from before key objects); `lifeboat repo key add` wraps it and adds another"
        )
        return
    rows = [(w.id, w.created[:19].replace("T", " "), "yes" if w.id == listing.in_use else "") for w in listing.keys]
    _table(("ID", "CREATED (UTC)", "IN USE"), rows)


@repo_key.command("remove")
@click.argument("key_id", metavar="ID")
@json_option(help='Print {"removed": ID} on stdout.')
@pass_session
def repo_key_remove(session: Session, key_id: str, as_json: bool) -> None:
    """Remove a key: its key file no longer opens the repository. Refuses the last key and the one
    the policy's key file is."""
    repository = session.repository()
    removed = remove_key(repository, key_id)
    if as_json:
        print_json({"removed": removed.id})
        return
    click.echo(f"removed key {removed.id} from {repository.url}")


@click.group()
def snapshots() -> None:
    """List and inspect snapshots."""


snapshots.add_command(snapshots_ls)
snapshots.add_command(snapshots_diff)


@snapshots.command("list")
@click.option("--source", help="Only this source's snapshots.")
@click.option(
    "--since", metavar="AGE|TIME", help="Only snapshots taken since then: an age like 7d or 12h, or an ISO 8601 time."
)
@click.option("--status", type=click.Choice(["good", "suspicious"]), help="Only snapshots of this status.")
@click.option("--latest", "latest_count", type=click.IntRange(min=1), metavar="N", help="Only the newest N (per source).")
@json_option(help='Print {"snapshots": [...]} on stdout.')
@pass_session
def snapshots_list(
    session: Session, source: str | None, since: str | None, status: str | None, latest_count: int | None, as_json: bool
) -> None:
    """Every snapshot in the repository, oldest first (--source: a source of the policy, or one
    whose snapshots are still in the repository), filtered by --since, --status and --latest."""
    policy = session.policy()
    cutoff = _since(since) if since else None
    repository = session.repository()
    headers = repository.list_snapshots(source)
    if source is not None and source not in policy.sources and not headers:
        raise unknown_name("source", source, policy.sources)
    headers = [h for h in headers if (cutoff is None or h.started >= cutoff) and (status is None or h.status == status)]
    if latest_count is not None:
        headers = _newest(headers, latest_count)
    if as_json:
        print_json({"snapshots": [header.summary() for header in headers]})
        return
    if not headers:
        click.echo("no snapshots" + (f" of source '{source}'" if source else ""))
        return
    rows = [
        (h.id, h.kind, h.started.strftime("%Y-%m-%d %H:%M:%S"), h.status, human_bytes(h.size), str(h.entry_count))
        for h in headers
    ]
    _table(("ID", "KIND", "TIME (UTC)", "STATUS", "SIZE", "ENTRIES"), rows)


@snapshots.command("show")
@click.argument("snapshot_id", metavar="ID")
@json_option(help="Print the whole header as JSON.")
@pass_session
def snapshots_show(session: Session, snapshot_id: str, as_json: bool) -> None:
    """One snapshot: times, status, size, fingerprint and census. ID: a snapshot id, a unique start
    of one, or latest (the newest snapshot of any source)."""
    header = find_header(session.repository(), snapshot_id)
    document = {
        **header.summary(),
        "tool_version": header.tool_version,
        "fingerprint": header.fingerprint,
        "census": header.census,
        "meta": header.meta,
    }
    consistency = header.meta.get("consistency")
    if consistency:  # when the snapshot's tables were read (sources that pin them: ClickHouse logical)
        document["consistency"] = consistency
    if as_json:
        print_json(document)
        return
    for key in ("id", "source", "kind", "time", "finished", "status", "entries"):
        click.echo(f"{key:>12}: {document[key]}")
    click.echo(f"{'size':>12}: {human_bytes(header.size)} ({header.size} bytes)")
    if consistency:
        click.echo(f"{'consistency':>12}: {consistency_summary(consistency)}")
    for key in ("census", "fingerprint"):
        if document[key]:
            click.echo(f"{key:>12}: {_short(document[key])}")


@click.command()
@click.option("--read-data", is_flag=True, help="Also read and re-hash every chunk.")
@click.option("--read-data-subset", "subset", metavar="PCT", help="Also read and re-hash a random share, e.g. 10%.")
@json_option(help='Print {"ok", "problems": [...]} on stdout.')
@pass_session
def check(session: Session, read_data: bool, subset: str | None, as_json: bool) -> None:
    """Prove every snapshot's manifest parses and every chunk it needs exists (exit 1 if not).

    Recorded in the state DB; problems are notified once per incident to notifiers on check-failure."""
    if read_data and subset:
        raise click.UsageError("give --read-data or --read-data-subset, not both")
    share = 1.0 if read_data else _percent(subset) if subset else 0.0
    repository = session.repository()
    with open_operations(session.policy(), redact=session.redactor.text) as operations:
        report = operations.check(repository=lambda: repository, read_data=share)
    if as_json:
        print_json(report.as_dict())
    else:
        for problem in report.problems:
            click.echo(f"{problem.kind}: {problem.message}")
        read = f", {report.chunks_read} chunks re-read ({human_bytes(report.bytes_read)})" if share else ""
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"check {verdict}: {report.snapshots} snapshots, {report.chunks_referenced} chunks referenced, "
            f"{report.chunks_stored} stored{f' ({report.packs_stored} packs)' if report.packs_stored else ''}{read}"
        )
    if not report.ok:
        click.get_current_context().exit(EXIT_FAILED)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be forgotten and deleted; change nothing.")
@click.option(
    "--forget-damaged",
    is_flag=True,
    help="Also forget snapshots whose manifest is damaged (`check` names them); without it they are kept, and no chunk "
    "is deleted while one is there.",
)
@json_option(help='Print {"forgotten", "kept", "chunks_deleted", ...} on stdout.')
@pass_session
def prune(session: Session, dry_run: bool, forget_damaged: bool, as_json: bool) -> None:
    """Apply every source's retention, then delete chunks no snapshot uses (after the grace period).

    Holds every source's lock (no backup or drill of this machine runs meanwhile); recorded in the state DB."""
    repository = session.repository()
    with open_operations(session.policy(), redact=session.redactor.text) as operations:
        report = operations.prune(repository=lambda: repository, dry_run=dry_run, forget_damaged=forget_damaged)
    if as_json:
        print_json(report.as_dict())
        return
    verb = "would forget" if dry_run else "forgot"
    for snapshot_id in report.forgotten:
        click.echo(f"{verb} {snapshot_id}")
    for snapshot_id in report.kept:
        click.echo(f"keep   {snapshot_id}  ({'; '.join(report.reasons[snapshot_id])})")
    for point_id in report.restore_points_forgotten:
        click.echo(f"{verb} restore point {point_id}")
    for point_id in report.restore_points_kept:
        click.echo(f"keep   restore point {point_id}  ({'; '.join(report.restore_point_reasons[point_id])})")
    deleted = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {len(report.forgotten)} snapshot(s), kept {len(report.kept)}; {deleted} {report.chunks_deleted} chunk(s) "
        f"({human_bytes(report.bytes_deleted)}); {report.chunks_in_grace} unreferenced chunk(s) still in the grace period"
        + (f"; {report.chunks_locked} under Object Lock, skipped" if report.chunks_locked else "")
        + (
            f"; {len(report.snapshots_locked)} forgotten snapshot(s) under Object Lock, deleted later"
            if report.snapshots_locked
            else ""
        )
        + (
            f"; deleted the manifests of {len(report.manifests_deleted)} forgotten earlier"
            if report.manifests_deleted
            else ""
        )
    )
    if report.chunks_kept_because:
        click.echo(f"warning: {report.chunks_kept_because}", err=True)


@click.command()
@click.option("--all", "live_too", is_flag=True, help="Also remove live locks: asks first, or give --yes.")
@click.option("--yes", is_flag=True, help="With --all: remove live locks without asking.")
@click.option("--json", "as_json", is_flag=True, help='Print {"removed": [...], "kept": [...]} on stdout.')
@pass_session
def unlock(session: Session, live_too: bool, yes: bool, as_json: bool) -> None:
    """Remove stale repository locks: of processes gone from this host (or from before its last
    reboot), and any whose heartbeat is older than repository.lock_stale_after. With --all, live
    locks too (their runs lose the protection from prune): only after a confirmation or --yes."""
    store, stale_after = session.repository().store, session.stale_after
    live: bool | list[str] = live_too
    if live_too and not yes:
        live = _confirmed_live_locks(list_locks(store), stale_after)
    sweep = remove_locks(store, stale_after=stale_after, live_too=live)
    if as_json:
        removed = [{**lock.as_dict(), "stale": reason} for lock, reason in sweep.removed]
        print_json({"removed": removed, "kept": [{**lock.as_dict(), "stale": None} for lock in sweep.kept]})
        return
    for lock, reason in sweep.removed:
        why = f": {reason}" if reason else ""
        click.echo(f"removed {'stale' if reason else 'live'} {lock.describe()}, heartbeat {_ago(lock)}{why}")
    for lock in sweep.kept:
        click.echo(f"kept live {lock.describe()}, heartbeat {_ago(lock)}")
    click.echo(f"removed {len(sweep.removed)} lock(s), kept {len(sweep.kept)}")


def _since(text: str) -> datetime:
    """The cutoff --since names: an age before now (7d, 12h) or an ISO 8601 time (UTC if no zone)."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is neither an age like 7d or 12h nor an ISO 8601 time like 2026-11-28T02:00:00Z", param_hint="--since"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _newest(headers: list[SnapshotHeader], count: int) -> list[SnapshotHeader]:
    """The newest ``count`` snapshots of each source, oldest first."""
    kept: dict[str, int] = {}
    newest = []
    for header in reversed(headers):
        if kept.get(header.source, 0) < count:
            kept[header.source] = kept.get(header.source, 0) + 1
            newest.append(header)
    return newest[::-1]


def _confirmed_live_locks(locks: list[LockInfo], stale_after: float) -> list[str]:
    """The keys of the live locks the user agreed to remove; UsageError without a terminal to ask on."""
    here = ThisHost.current()
    live = [lock for lock in locks if stale_reason(lock, stale_after=stale_after, here=here) is None]
    if not live:
        return []
    if not sys.stdin.isatty():
        raise click.UsageError(f"--all would remove {len(live)} live lock(s) and nobody can be asked: add --yes")
    for lock in live:
        click.echo(f"live {lock.describe()}, heartbeat {_ago(lock)}", err=True)
    click.confirm(f"remove these {len(live)} live lock(s)? Their runs lose the protection from prune", abort=True, err=True)
    return [lock.key for lock in live]


def _ago(lock: LockInfo) -> str:
    return f"{human_duration(max(lock.age_seconds, 0.0))} ago"


def _percent(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a percentage like 10%", param_hint="--read-data-subset") from None
    if not 0 < value <= 100:
        raise click.BadParameter("must be above 0% and at most 100%", param_hint="--read-data-subset")
    return value / 100


def _table(headings: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows, strict=True)]
    for row in (headings, *rows):
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
