"""``lifeboat restore-point list|show``: the restore points across sources in the repository."""

from __future__ import annotations

import click

from backup.repository.repository import Repository, SnapshotNotFound
from backup.repository.restore_points import RestorePoint, list_restore_points, read_restore_point, restore_point_ids
from lifeboat.commands.backup import restore_point_line
from lifeboat.context import LATEST, Session, json_option, pass_session, print_json, unknown_name
from policies.errors import UsageError


@click.group("restore-point")
def restore_point() -> None:
    """Restore points: snapshots of several sources taken together (`backup run --restore-point NAME`)."""


@restore_point.command("list")
@click.option("--name", metavar="NAME", help="Only the restore points of this name (policy restore_points).")
@json_option(help='Print {"restore_points": [...]} on stdout.')
@pass_session
def list_points(session: Session, name: str | None, as_json: bool) -> None:
    """Every restore point, oldest first: id, status (complete or failed), spread, member snapshots."""
    if name is not None and name not in session.policy().restore_points:
        raise unknown_name("restore point", name, session.policy().restore_points)
    points = list_restore_points(session.repository(), name)
    if as_json:
        print_json({"restore_points": [point.summary() for point in points]})
        return
    for point in points:
        click.echo(restore_point_line(point))
    if not points:
        click.echo("no restore point yet: take one with `lifeboat backup run --restore-point NAME`")


@restore_point.command("show")
@click.argument("point_id", metavar="ID")
@json_option(help="Print the restore point's manifest as JSON on stdout.")
@pass_session
def show(session: Session, point_id: str, as_json: bool) -> None:
    """One restore point (ID, a unique start of one, or latest): its members' snapshots and
    consistency windows, the spread, and the members that failed."""
    point = find_restore_point(session.repository(), point_id)
    if as_json:
        print_json(point.as_dict())
        return
    click.echo(restore_point_line(point))
    for member in point.members:
        if member.snapshot is None:
            click.echo(f"  {member.source}: FAILED: {member.error}")
            continue
        window = member.as_dict().get("window", {})
        click.echo(f"  {member.source}: {member.snapshot}, window {window.get('start')} .. {window.get('end')}")


def find_restore_point(repository: Repository, text: str) -> RestorePoint:
    """The restore point ``text`` names: a whole id, ``latest`` (the newest of any name) or a unique
    start of one. Raises SnapshotNotFound (none), UsageError (an ambiguous prefix)."""
    ids = restore_point_ids(repository)
    if text == LATEST:
        if not ids:
            raise SnapshotNotFound(f"no restore point in {repository.url}")
        return read_restore_point(repository, ids[-1])
    if text in ids:
        return read_restore_point(repository, text)
    matches = [point_id for point_id in ids if point_id.startswith(text)]
    if not matches:
        raise SnapshotNotFound(f"no restore point {text} in {repository.url}: see `lifeboat restore-point list`")
    if len(matches) > 1:
        raise UsageError(f"'{text}' starts {len(matches)} restore point ids: give more of it", matches=matches)
    return read_restore_point(repository, matches[0])
