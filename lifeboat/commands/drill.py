"""``lifeboat drill run|history`` and ``lifeboat janitor``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import structlog

from drills.history import load_history
from drills.model import DrillRun, Status
from drills.report.text import render_text
from lifeboat.context import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNVERIFIED,
    Session,
    json_option,
    pass_session,
    print_json,
    unknown_name,
)
from lifeboat.operations import open_operations
from policies.durations import human_duration

log = structlog.get_logger(__name__)
EXIT_CODES = {Status.PASS: EXIT_OK, Status.FAIL: EXIT_FAILED, Status.ERROR: EXIT_UNVERIFIED}


@click.group()
def drill() -> None:
    """Prove that snapshots restore: run drills, read their history."""


@drill.command("run")
@click.argument("name")
@json_option(help="Print the drill report as JSON on stdout.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), help="Write the reports here.")
@click.option("--no-email", is_flag=True, help="Do not notify anyone.")
@click.option(
    "--only-checks", is_flag=True, help="Re-run the checks alone: restore, verify, checks; no RPO, drift or faults."
)
@pass_session
def drill_run(
    session: Session, name: str, as_json: bool, report_dir: Path | None, no_email: bool, only_checks: bool
) -> None:
    """Run drill NAME now. Exit 0 PASS, 1 FAIL, 3 ERROR (could not verify)."""
    policy = session.policy()
    if name not in policy.drills:
        raise unknown_name("drill", name, policy.drills)
    repository = session.repository()
    with open_operations(policy, redact=session.redactor.text) as operations:
        run = operations.drill(
            name, repository=lambda: repository, report_dir=report_dir, notify=not no_email, only_checks=only_checks
        )
    if as_json:
        print_json(run.to_dict())
    else:
        click.echo(render_text(run))
        click.echo(f"reports: {Path(run.report_files['json']).parent}")
    click.get_current_context().exit(EXIT_CODES[run.verdict])


@drill.command("history")
@click.argument("name", required=False)
@json_option(help='Print {"runs": [...]} on stdout.')
@click.option("--limit", default=20, show_default=True, help="How many of the newest runs.")
@pass_session
def drill_history(session: Session, name: str | None, as_json: bool, limit: int) -> None:
    """Past drill runs (stored in the repository), oldest first (NAME: a drill of the policy, or one
    whose runs are still in the repository)."""
    policy = session.policy()
    runs = load_history(session.repository(), name, limit=limit)
    if name is not None and name not in policy.drills and not runs:
        raise unknown_name("drill", name, policy.drills)
    if as_json:
        print_json({"runs": [_history_item(run) for run in runs]})
        return
    if not runs:
        click.echo("no drill runs yet" + (f" of '{name}'" if name else ""))
    for run in runs:
        rto = human_duration(run.rto_seconds) if run.rto_seconds is not None else "-"
        click.echo(f"{run.started:%Y-%m-%d %H:%M:%S}  {run.drill:<16} {run.verdict.value:<5}  RTO {rto:<8} {run.run_id}")


def _history_item(run: DrillRun) -> dict[str, Any]:
    document = run.to_dict()
    keep = ("drill", "run_id", "verdict", "started", "finished", "rto_seconds")
    per_source = ("source", "verdict", "rto_seconds", "rpo_seconds")
    sources = [{key: source[key] for key in per_source} for source in document["sources"]]
    return {**{key: document[key] for key in keep}, "sources": sources}


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@json_option(help='Print {"removed": [...]} on stdout.')
@pass_session
def janitor(session: Session, dry_run: bool, as_json: bool) -> None:
    """Remove what dead drill runs left behind: scratch processes, directories, databases, buckets;
    on Kubernetes, expired drill namespaces and old finished pods and Jobs of configured namespaces;
    and the repository's stale locks (as `lifeboat unlock` does)."""
    with open_operations(session.policy(), redact=session.redactor.text) as operations:
        removed = operations.janitor(dry_run=dry_run, repository=session.repository)
    if as_json:
        print_json({"dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        click.echo(f"{verb} {item}")
    click.echo(f"{verb} {len(removed)} leftover(s)")
