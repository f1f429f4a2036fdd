"""The ``lifeboat`` command line (DESIGN section 7): the only place errors become exit codes.

Exit codes: 0 success / drill PASS, 1 operation failed / drill FAIL, 2 usage or config error (and a
missing repository), 3 drill ERROR (could not verify), 4 ``backup run`` took a suspicious snapshot
(and none failed). With ``--json`` a command prints exactly one JSON document on stdout, on success
and on failure (``{"ok": false, "error": {"kind", "message", ...}}``), and nothing else there;
messages and logs go to stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifeboat import __version__
from lifeboat.context import EXIT_FAILED, EXIT_USAGE, JSON_PRINTED, JSON_REQUESTED, Session
from policies.errors import (
    ConfigError,
    IntegrityError,
    LifeboatError,
    RestoreError,
    SourceError,
    StoreError,
    UsageError,
)

if TYPE_CHECKING:
    from lifeboat.logs import LogFormat

# Each command's module is imported when that command runs: a cron job's `backup run` of etcd
# does not load the Kubernetes client, the drills or the scheduler. Its summary (the first sentence
# of its help, checked by tests/unit/lifeboat/test_startup.py) is here so that `lifeboat --help`
# lists the commands without importing any.
COMMANDS = {
    "policy": ("lifeboat.commands.policy:policy", "Check the policy file."),
    "repo": ("lifeboat.commands.repository:repo", "Create the configured repository; rotate its key."),
    "backup": ("lifeboat.commands.backup:backup", "Take snapshots."),
    "restore": (
        "lifeboat.commands.backup:restore",
        "Restore a snapshot of SOURCE into a target; refuses a non-empty target without --yes.",
    ),
    "restore-point": (
        "lifeboat.commands.restore_point:restore_point",
        "Restore points: snapshots of several sources taken together (`backup run --restore-point NAME`).",
    ),
    "verify": (
        "lifeboat.commands.backup:verify",
        "Compare a restored copy of SOURCE (the same target options as restore) with a snapshot and print every difference.",
    ),
    "snapshots": ("lifeboat.commands.repository:snapshots", "List and inspect snapshots."),
    "check": (
        "lifeboat.commands.repository:check",
        "Prove every snapshot's manifest parses and every chunk it needs exists (exit 1 if not).",
    ),
    "prune": (
        "lifeboat.commands.repository:prune",
        "Apply every source's retention, then delete chunks no snapshot uses (after the grace period).",
    ),
    "unlock": (
        "lifeboat.commands.repository:unlock",
        "Remove stale repository locks: of processes gone from this host (or from before its last reboot),"
        " and any whose heartbeat is older than repository.lock_stale_after.",
    ),
    "copy": (
        "lifeboat.commands.copy:copy",
        "Copy snapshots into the repository of another policy file, without reading the sources again.",
    ),
    "stats": (
        "lifeboat.commands.inspect:stats",
        "Logical size (what the snapshots' entries add up to), size after dedup, stored size (after"
        " compression and encryption), chunk count and dedup ratio, per source and in total.",
    ),
    "drill": ("lifeboat.commands.drill:drill", "Prove that snapshots restore: run drills, read their history."),
    "janitor": (
        "lifeboat.commands.drill:janitor",
        "Remove what dead drill runs left behind: scratch processes, directories, databases, buckets; on"
        " Kubernetes, expired drill namespaces and old finished pods and Jobs of configured namespaces; and"
        " the repository's stale locks (as `lifeboat unlock` does).",
    ),
    "evidence": (
        "lifeboat.commands.evidence:evidence",
        "Signed, chained evidence of every drill run, its verification, and the compliance report.",
    ),
    "demo": (
        "lifeboat.demo:demo",
        "The whole story on this machine: local servers, data, two backups, a drill with every fault.",
    ),
    "status": (
        "lifeboat.commands.service:status",
        "Per source: last success and failure, snapshots, next runs; per drill: the last verdict.",
    ),
    "serve": (
        "lifeboat.commands.service:serve",
        "Run the scheduler with /healthz and /metrics until SIGTERM or SIGINT (exit 0).",
    ),
    "doctor": (
        "lifeboat.commands.doctor:doctor",
        "Check the repository, each source, the scratch environment and each notifier as the policy names"
        " them: reachable, credentials, rights, settings.",
    ),
}
COMMAND_LINE = "lifeboat.command_line"  # ctx.meta: the words after `lifeboat`
EXIT_INTERRUPTED = 130


class LifeboatGroup(click.Group):
    """Loads commands when used; turns errors into a message on stderr and the contract's exit code,
    never a traceback for them. A command given ``--json`` prints exactly one JSON document on stdout
    whatever happens: its own, or ``{"ok": false, "error": {"kind", "message", ...}}`` made here."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        importlib.import_module("lifeboat.logs")  # before the command's modules: see there why
        module, _, attribute = COMMANDS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` as click writes it, from the summaries in COMMANDS."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=text).get_short_help_str(limit)) for name, (_, text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the group's own options (--log-format...)
            if not _json_in(args):
                raise
            _report(None, exc, json_wanted=True)
            raise click.exceptions.Exit(EXIT_USAGE) from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[COMMAND_LINE] = list(args)  # for errors that come before the command's --json is read
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            if not _wants_json(ctx):
                raise  # click prints its usage text and the error, exit 2 (or the exception's code)
            _report(ctx, exc, json_wanted=True)
            ctx.exit(exc.exit_code)
        except (LifeboatError, KeyboardInterrupt) as exc:
            ctx.exit(_report(ctx, exc, json_wanted=_wants_json(ctx)))
        except Exception as exc:  # a bug: its traceback follows on stderr; a --json caller still gets JSON
            if _wants_json(ctx):
                _print_document(ctx, error_document(exc))
            raise


def error_kind(exc: BaseException) -> tuple[str, int]:
    """``(kind, exit code)`` of an error, from its class (the first family that matches, in order)."""
    from backup.repository.locks import RepositoryLocked  # only on errors: keeps the start cheap
    from backup.repository.repository import RepositoryKeyError, RepositoryNotFound, SnapshotNotFound

    families: list[tuple[type[BaseException], str, int]] = [
        (click.UsageError, "usage", EXIT_USAGE),
        (UsageError, "usage", EXIT_USAGE),
        (ConfigError, "config", EXIT_USAGE),
        (RepositoryNotFound, "no-repository", EXIT_USAGE),
        (SnapshotNotFound, "not-found", EXIT_FAILED),
        (RepositoryLocked, "locked", EXIT_FAILED),
        (RepositoryKeyError, "key", EXIT_FAILED),
        (IntegrityError, "integrity", EXIT_FAILED),
        (RestoreError, "restore", EXIT_FAILED),
        (SourceError, "source", EXIT_FAILED),
        (StoreError, "store", EXIT_FAILED),
        (KeyboardInterrupt, "interrupted", EXIT_INTERRUPTED),
    ]
    for family, kind, code in families:
        if isinstance(exc, family):
            return kind, code
    if isinstance(exc, click.ClickException):
        return "usage", exc.exit_code
    if isinstance(exc, LifeboatError):  # PruneRefused -> "prune-refused", ServiceError -> "service"...
        name = type(exc).__name__.removesuffix("Error")
        return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower(), EXIT_FAILED
    return "internal", EXIT_FAILED


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"ok": false, "error": {"kind", "message", ...}}``; a config error adds its file and every
    issue (``errors``: path, message, line), a usage error its details (an ambiguous prefix: ``matches``)."""
    kind, _ = error_kind(exc)
    error: dict[str, Any] = {"kind": kind, "message": _message(exc)}
    if isinstance(exc, ConfigError):
        error["file"] = exc.file
        error["errors"] = [{"path": i.path, "message": i.message, "line": i.line} for i in exc.issues]
    if isinstance(exc, UsageError):
        error.update(exc.details)
    return {"ok": False, "error": error}


def _message(exc: BaseException) -> str:
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) or type(exc).__name__


def _report(ctx: click.Context | None, exc: BaseException, *, json_wanted: bool) -> int:
    """Say what went wrong on stderr (and, for --json, in the error document on stdout, unless the
    command printed its document already); return the exit code."""
    kind, code = error_kind(exc)
    message = _message(exc)
    if json_wanted:
        _print_document(ctx, error_document(exc))
    text = message if kind in ("config", "interrupted") else f"error: {message}"
    click.echo(_redact(ctx, text), err=True)
    return code


def _print_document(ctx: click.Context | None, document: dict[str, Any]) -> None:
    if ctx is not None and ctx.meta.get(JSON_PRINTED):
        return  # one document on stdout, never two
    click.echo(_redact(ctx, json.dumps(document, indent=2, default=str, ensure_ascii=False)))
    if ctx is not None:
        ctx.meta[JSON_PRINTED] = True


def _redact(ctx: click.Context | None, text: str) -> str:
    session = ctx.find_object(Session) if ctx is not None else None
    return session.redactor.text(text) if session else text


def _wants_json(ctx: click.Context) -> bool:
    """Whether the command that ran was given --json: its option says so once parsed (context meta);
    for a mistake found while parsing its options, the command line does."""
    if JSON_REQUESTED in ctx.meta:
        return bool(ctx.meta[JSON_REQUESTED])
    return _json_in(ctx.meta.get(COMMAND_LINE, []))


def _json_in(args: list[str]) -> bool:
    words = args[: args.index("--")] if "--" in args else args
    return "--json" in words


EXIT_CODES_HELP = (
    "Exit codes: 0 success / drill PASS; 1 failed / drill FAIL; 2 usage or config error, or no repository "
    "(`lifeboat repo init` makes it); 3 drill ERROR (could not verify); 4 backup run took a suspicious "
    "snapshot (none failed). With --json: one JSON document on stdout, on failure "
    '{"ok": false, "error": {"kind", "message"}}. Completion: eval "$(_LIFEBOAT_COMPLETE=bash_source lifeboat)".'
)


@click.group(cls=LifeboatGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "--version", "-V", prog_name="lifeboat")
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
    from lifeboat.logs import configure  # structlog: not for --help, --version

    ctx.obj = Session(config_path=config_path, redactor=configure(log_format))


_M_ARENA_MAX = -8  # glibc malloc.h


def main() -> None:
    """Console-script entry point."""
    _few_malloc_arenas()
    set_library_defaults()
    cli(prog_name="lifeboat")


# Switches of the libraries, for what every start costs (issue 22); a value the user sets wins.
LIBRARY_DEFAULTS = {
    # Lifeboat uses no pydantic plugin; without this, pydantic looks for one in the entry points of
    # every installed package when the policy's models are built (6 ms). An empty value turns them on.
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
    # clickhouse-driver makes a table of every date from 1900 to 2299 when imported (0.07-0.1 s of
    # each run that reads ClickHouse); with a range, it makes only those and each other date when
    # first met. "LASY" is the library's own spelling.
    "CLICKHOUSE_DRIVER_LASY_DATE_LUT": "1970-01-01:1970-01-01",
}


def set_library_defaults() -> None:
    """Set LIBRARY_DEFAULTS in the environment, before the libraries are imported."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and every arena
    keeps the 1 MiB chunk buffers it once held: a backup writing 16 S3 objects at once peaked at 120
    MiB, 94 with two arenas, at the same speed (issue 22). Not glibc (musl, macOS): nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)
