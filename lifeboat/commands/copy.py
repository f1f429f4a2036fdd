"""``lifeboat copy``: snapshots into a second repository, verified (the off-site copy of 3-2-1)."""

from __future__ import annotations

from pathlib import Path

import click

from backup.repository import Repository, RepositoryNotFound, open_repository
from backup.repository.copy import CopyReport, copy_snapshots
from backup.repository.manifest import SnapshotHeader
from lifeboat.context import EXIT_FAILED, Session, find_header, json_option, pass_session, print_json, unknown_name
from policies.loader import load_policy
from policies.sizes import human_bytes


@click.command("copy")
@click.option(
    "--to",
    "target_config",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The policy file of the target: its `repository:` section (URL, credentials, key) is used.",
)
@click.option("--source", "sources", multiple=True, help="Only this source's snapshots (repeatable).")
@click.option(
    "--snapshot", "snapshot_ids", multiple=True, metavar="ID", help="Only this snapshot (repeatable; latest, prefixes)."
)
@json_option(help='Print {"ok", "target", "snapshots": [{"id", "status", ...}], "chunks_written", "bytes_written"}.')
@pass_session
def copy(
    session: Session, target_config: Path, sources: tuple[str, ...], snapshot_ids: tuple[str, ...], as_json: bool
) -> None:
    """Copy snapshots into the repository of another policy file, without reading the sources again.

    Every chunk is read from this repository and checked, then written into the target with the
    target's own key and compression. Snapshots the target holds already are skipped, chunks it holds
    are not written again: a rerun copies only what is new. The target must exist (`lifeboat --config
    OTHER repo init`). Exit 1 when a snapshot could not be copied (a damaged chunk: nothing of it is
    committed)."""
    source = session.repository()
    headers = _selected(session, source, sources, snapshot_ids)
    target = _target(target_config)
    try:
        report = copy_snapshots(source, target, headers, stale_after=session.stale_after)
    finally:
        target.close()
    if as_json:
        print_json(report.as_dict())
    else:
        _print(report)
    if not report.ok:
        click.get_current_context().exit(EXIT_FAILED)


def _selected(
    session: Session, repository: Repository, sources: tuple[str, ...], snapshot_ids: tuple[str, ...]
) -> list[SnapshotHeader]:
    """The snapshots asked for: by id (each must exist), else every one (of ``sources``)."""
    policy = session.policy()
    stored = {header.source for header in repository.list_snapshots()} if sources else set()
    for name in sources:
        if name not in policy.sources and name not in stored:
            raise unknown_name("source", name, policy.sources)
    if snapshot_ids:
        headers = {header.id: header for header in (find_header(repository, text) for text in snapshot_ids)}
        return [header for header in headers.values() if not sources or header.source in sources]
    if not sources:
        return repository.list_snapshots()
    return [header for name in sources for header in repository.list_snapshots(name)]


def _target(config: Path) -> Repository:
    settings = load_policy(config).repository
    try:
        return open_repository(settings)
    except RepositoryNotFound:
        raise RepositoryNotFound(
            f"the target repository {settings.url} (of {config}) does not exist: create it with "
            f"`lifeboat --config {config} repo init`"
        ) from None


def _print(report: CopyReport) -> None:
    for item in report.snapshots:
        if item.status == "copied":
            click.echo(
                f"copied  {item.id}: {item.chunks_written} chunk(s) written ({human_bytes(item.bytes_written)}), "
                f"{item.chunks_reused} already there"
            )
        elif item.status == "skipped":
            click.echo(f"skipped {item.id}: {item.message}")
        else:
            click.echo(f"FAILED  {item.id}: {item.message}", err=True)
    click.echo(
        f"copied {report.count('copied')} snapshot(s), skipped {report.count('skipped')}, failed {report.count('failed')}; "
        f"{report.chunks_written} chunk(s) written ({human_bytes(report.bytes_written)}) to {report.target}"
    )
