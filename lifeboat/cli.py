"""The ``lifeboat`` command line (DESIGN section 7): the only place errors become exit codes.

Exit codes: 0 success / drill PASS, 1 operation failed / drill FAIL, 2 usage or config error,
3 drill ERROR (could not verify). With ``--json`` a command prints one JSON document on stdout
and nothing else there; messages and logs go to stderr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import structlog

from lifeboat import __version__
from lifeboat.logs import LogFormat, Redactor, configure
from policies.errors import ConfigError, LifeboatError
from policies.loader import load_policy
from policies.model import Policy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNVERIFIED = 3

log = structlog.get_logger("lifeboat.cli")


@dataclass
class Session:
    """What every command gets: where the policy is, and the redactor that learns its secrets."""

    config_path: Path
    redactor: Redactor
    _policy: Policy | None = field(default=None, repr=False)

    def policy(self) -> Policy:
        """The validated policy (loaded once); raises ConfigError."""
        if self._policy is None:
            self._policy = load_policy(self.config_path)
            self.redactor.add(self._policy.secret_values())
        return self._policy


class LifeboatGroup(click.Group):
    """Turns Lifeboat's errors into a message on stderr and an exit code; never a traceback for them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            self._fail(ctx, str(exc), EXIT_USAGE)
        except LifeboatError as exc:
            self._fail(ctx, f"error: {exc}", EXIT_FAILED)
        except KeyboardInterrupt:
            self._fail(ctx, "interrupted", 130)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        session = ctx.find_object(Session)
        click.echo(session.redactor.text(message) if session else message, err=True)
        ctx.exit(code)


@click.group(cls=LifeboatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lifeboat")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LIFEBOAT_CONFIG",
    default="lifeboat.yaml",
    show_default="$LIFEBOAT_CONFIG, then ./lifeboat.yaml",
    help="The policy file.",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default=None,
    help="Log lines on stderr: console (default on a terminal) or json (default otherwise).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path, log_format: LogFormat | None) -> None:
    """Lifeboat: backups of etcd, ClickHouse and S3 buckets, and drills that prove they restore."""
    ctx.obj = Session(config_path=config_path, redactor=configure(log_format))


@cli.group()
def policy() -> None:
    """Check the policy file."""


@policy.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print {ok, errors: [{path, message}]} on stdout.")
@click.pass_context
def policy_validate(ctx: click.Context, as_json: bool) -> None:
    """Validate the policy file and list every error, each with its path."""
    session: Session = ctx.obj
    try:
        loaded = session.policy()
    except ConfigError as exc:
        if not as_json:
            raise
        errors = [{"path": i.path, "message": session.redactor.text(i.message), "line": i.line} for i in exc.issues]
        _print_json({"ok": False, "file": exc.file, "errors": errors})
        ctx.exit(EXIT_USAGE)
    if as_json:
        _print_json({"ok": True, "file": str(session.config_path), "errors": [], **_summary(loaded)})
        return
    summary = _summary(loaded)
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


def _print_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lifeboat")
