"""What every command gets: the policy (loaded once), the repository, the redactor; exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from backup.repository import Repository, open_repository
from lifeboat.logs import Redactor
from policies.loader import load_policy
from policies.model import Policy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNVERIFIED = 3


@dataclass
class Session:
    config_path: Path
    redactor: Redactor
    _policy: Policy | None = field(default=None, repr=False)
    _repository: Repository | None = field(default=None, repr=False)

    def policy(self) -> Policy:
        """The validated policy (loaded once); raises ConfigError."""
        if self._policy is None:
            self._policy = load_policy(self.config_path)
            self.redactor.add(self._policy.secret_values())
        return self._policy

    def repository(self, *, create: bool = False) -> Repository:
        """The configured repository, opened once and closed when the command ends."""
        if self._repository is None:
            self._repository = open_repository(self.policy().repository, create=create)
            click.get_current_context().call_on_close(self._repository.close)
        return self._repository

    @property
    def stale_after(self) -> float:
        return self.policy().repository.lock_stale_after.total_seconds()


pass_session = click.make_pass_decorator(Session)


def print_json(document: dict[str, Any]) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(document, indent=2, default=str, ensure_ascii=False))
