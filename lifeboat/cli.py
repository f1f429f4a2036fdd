"""The ``lifeboat`` command line (DESIGN section 7): the only place errors become exit codes.

Exit codes: 0 success / drill PASS, 1 operation failed / drill FAIL, 2 usage or config error,
3 drill ERROR (could not verify). With ``--json`` a command prints one JSON document on stdout
and nothing else there; messages and logs go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lifeboat import __version__
from lifeboat.commands.backup import backup, restore
from lifeboat.commands.drill import drill, janitor
from lifeboat.commands.policy import policy
from lifeboat.commands.repository import check, prune, repo, snapshots
from lifeboat.commands.service import serve, status
from lifeboat.context import EXIT_FAILED, EXIT_USAGE, Session
from lifeboat.demo import demo
from lifeboat.logs import LogFormat, configure
from policies.errors import ConfigError, LifeboatError


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


for command in (policy, repo, backup, restore, snapshots, check, prune, drill, janitor, demo, status, serve):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lifeboat")
