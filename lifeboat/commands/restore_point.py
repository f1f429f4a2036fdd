"""``lifeboat restore-point list|show``: the restore points across sources in the repository."""

from __future__ import annotations

import click

from backup.repository.restore_points import list_restore_points
from lifeboat.commands.backup import restore_point_line
from lifeboat.context import Session, find_restore_point, json_option, pass_session, print_json, unknown_name


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
