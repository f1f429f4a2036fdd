"""``lifeboat policy validate``."""

from __future__ import annotations

from typing import Any

import click

from lifeboat.context import EXIT_USAGE, Session, json_option, print_json
from policies.errors import ConfigError
from policies.model import Policy


@click.group()
def policy() -> None:
    """Check the policy file."""


@policy.command("validate")
@json_option(help="Print {ok, errors: [{path, message}]} on stdout.")
@click.pass_context
def validate(ctx: click.Context, as_json: bool) -> None:
    """Validate the policy file and list every error, each with its path."""
    session: Session = ctx.obj
    try:
        loaded = session.policy()
    except ConfigError as exc:
        if not as_json:
            raise
        errors = [{"path": i.path, "message": session.redactor.text(i.message), "line": i.line} for i in exc.issues]
        error = {"kind": "config", "message": session.redactor.text(str(exc)), "file": exc.file, "errors": errors}
        print_json({"ok": False, "file": exc.file, "errors": errors, "error": error})
        ctx.exit(EXIT_USAGE)
    summary = _summary(loaded)
    if as_json:
        print_json({"ok": True, "file": str(session.config_path), "errors": [], **summary})
        return
    sources = ", ".join(f"{name} ({kind})" for name, kind in summary["sources"].items())
    click.echo(
        f"{session.config_path}: OK: {_count(len(summary['sources']), 'source')} [{sources}], "
        f"{_count(len(summary['drills']), 'drill')}, {_count(len(summary['notifiers']), 'notifier')}; "
        f"repository {summary['repository']}"
    )


def _summary(loaded: Policy) -> dict[str, Any]:
    return {
        "repository": loaded.repository.url,
        "sources": {name: source.kind for name, source in loaded.sources.items()},
        "drills": sorted(loaded.drills),
        "notifiers": sorted(loaded.notify),
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
