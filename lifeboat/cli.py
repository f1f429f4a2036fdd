"""The ``lifeboat`` command line (DESIGN section 7): the only place errors become exit codes.

Exit codes: 0 success / drill PASS, 1 operation failed / drill FAIL, 2 usage or config error,
3 drill ERROR (could not verify). With ``--json`` a command prints one JSON document on stdout
and nothing else there; messages and logs go to stderr.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from lifeboat import __version__
from lifeboat.context import EXIT_FAILED, EXIT_USAGE, Session
from lifeboat.logs import LogFormat, configure
from policies.errors import ConfigError, LifeboatError

# Each command's module is imported when that command runs: a cron job's `backup run` of etcd
# does not load the Kubernetes client, the drills or the scheduler.
COMMANDS = {
    "policy": "lifeboat.commands.policy:policy",
    "repo": "lifeboat.commands.repository:repo",
    "backup": "lifeboat.commands.backup:backup",
    "restore": "lifeboat.commands.backup:restore",
    "verify": "lifeboat.commands.backup:verify",
    "snapshots": "lifeboat.commands.repository:snapshots",
    "check": "lifeboat.commands.repository:check",
    "prune": "lifeboat.commands.repository:prune",
    "unlock": "lifeboat.commands.repository:unlock",
    "drill": "lifeboat.commands.drill:drill",
    "janitor": "lifeboat.commands.drill:janitor",
    "demo": "lifeboat.demo:demo",
    "status": "lifeboat.commands.service:status",
    "serve": "lifeboat.commands.service:serve",
}


class LifeboatGroup(click.Group):
    """Loads commands when used; turns Lifeboat's errors into a message on stderr and an exit
    code, never a traceback for them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lifeboat")
