"""What every command gets: the policy (loaded once), the repository, the redactor; exit codes,
the ``--json`` option and its one document, and how a snapshot id is named on the command line.

The repository and the policy are imported by the functions that use them: ``lifeboat --help`` and
``lifeboat/cli.py``'s error reporting import this module and need neither (issue 22: start-up time).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from policies.errors import UsageError

if TYPE_CHECKING:
    from backup.repository import Repository
    from backup.repository.manifest import SnapshotHeader
    from backup.repository.restore_points import RestorePoint
    from lifeboat.logs import Redactor
    from policies.model import Policy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNVERIFIED = 3
EXIT_SUSPICIOUS = 4  # backup run: a snapshot was taken, but the anomaly guard flagged it (none failed)

# ctx.meta keys (ctx.meta is shared by a command's context and its parents'): whether the running
# command was given --json, and whether it printed its document already. lifeboat/cli.py reads them
# to print the error document.
JSON_REQUESTED = "lifeboat.json"
JSON_PRINTED = "lifeboat.json_printed"
LATEST = "latest"
AMBIGUOUS_SHOWN = 10  # matches of an ambiguous id prefix named in the message

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Session:
    config_path: Path
    redactor: Redactor
    _policy: Policy | None = field(default=None, repr=False)
    _repository: Repository | None = field(default=None, repr=False)

    def policy(self) -> Policy:
        """The validated policy (loaded once); raises ConfigError."""
        if self._policy is None:
            from lifeboat.notify import policy_secrets
            from policies.loader import load_policy

            self._policy = load_policy(self.config_path)
            self.redactor.add(policy_secrets(self._policy))
        return self._policy

    def repository(self) -> Repository:
        """The configured repository, opened once and closed when the command ends. Never created
        here (only ``lifeboat repo init`` does): raises RepositoryNotFound saying how to create it."""
        if self._repository is None:
            from backup.repository import open_repository

            self._repository = open_repository(self.policy().repository)
            click.get_current_context().call_on_close(self._repository.close)
        return self._repository

    @property
    def stale_after(self) -> float:
        return self.policy().repository.lock_stale_after.total_seconds()


pass_session = click.make_pass_decorator(Session)


def json_option(help: str) -> Callable[[F], F]:
    """``--json``: print one JSON document on stdout. Processed before the other options (eager),
    so that an error in any of them is reported as the JSON error document too."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[JSON_REQUESTED] = value
        return value

    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=remember, help=help)


def print_json(document: dict[str, Any]) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(document, indent=2, default=str, ensure_ascii=False))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[JSON_PRINTED] = True


def unknown_name(what: str, name: str, defined: Any) -> click.UsageError:
    """The usage error (exit 2) for a source or drill name the policy does not define."""
    names = ", ".join(sorted(defined)) or "none"
    return click.UsageError(f"unknown {what} '{name}'; defined in the policy: {names}")


def find_header(repository: Repository, text: str, *, source: str | None = None) -> SnapshotHeader:
    """The snapshot ``text`` names: a whole id, ``latest`` (the newest snapshot, of ``source`` when
    given, whatever its status) or a prefix of exactly one id. Raises SnapshotNotFound (nothing
    matches), UsageError (an ambiguous prefix, listing the ids it matches)."""
    from backup.repository.repository import SnapshotNotFound

    where = f" of source '{source}'" if source else ""
    if text == LATEST:
        ids = repository.snapshot_ids(source)
        if not ids:
            raise SnapshotNotFound(f"no snapshot{where} in {repository.url}")
        return repository.read_header(ids[-1])
    ids = repository.snapshot_ids(source)
    if text in ids:
        return repository.read_header(text)
    matches = [snapshot_id for snapshot_id in ids if snapshot_id.startswith(text)]
    if not matches:
        raise SnapshotNotFound(f"no snapshot {text}{where} in {repository.url}: no snapshot id is or starts with that")
    if len(matches) > 1:
        shown = ", ".join(matches[:AMBIGUOUS_SHOWN]) + (" ..." if len(matches) > AMBIGUOUS_SHOWN else "")
        raise UsageError(
            f"'{text}' is the start of {len(matches)} snapshot ids ({shown}): give more of the id", matches=matches
        )
    return repository.read_header(matches[0])


def find_restore_point(repository: Repository, text: str) -> RestorePoint:
    """The restore point ``text`` names: a whole id, ``latest`` (the newest of any name) or a unique
    start of one. Raises SnapshotNotFound (none), UsageError (an ambiguous prefix)."""
    from backup.repository.repository import SnapshotNotFound
    from backup.repository.restore_points import read_restore_point, restore_point_ids

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
