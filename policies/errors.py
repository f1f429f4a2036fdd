"""The one exception tree of Lifeboat.

Every error a user can cause or meet derives from ``LifeboatError``; only ``lifeboat/cli.py`` maps
them to exit codes. Lower layers wrap foreign exceptions at their boundary
(``raise StoreError(...) from exc``) so that callers never see a boto3 or socket error raw.
"""

from __future__ import annotations

from dataclasses import dataclass


class LifeboatError(Exception):
    """Root of every error Lifeboat raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a policy file: where it is and what is wrong."""

    path: str
    message: str
    line: int | None = None


class ConfigError(LifeboatError):
    """The policy file (or a command's arguments about it) is wrong; carries every issue at once."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = list(issues)
        lines = [f"{file}: {len(self.issues)} error{'s' if len(self.issues) != 1 else ''}"]
        lines += [f"  {_where(file, issue)}: {issue.message}" for issue in self.issues]
        super().__init__("\n".join(lines))


def _where(file: str, issue: ConfigIssue) -> str:
    place = f"{file}:{issue.line}" if issue.line else file
    return f"{place}: {issue.path}" if issue.path else place


class SourceError(LifeboatError):
    """A source (etcd, ClickHouse, S3) could not be read or written."""


class StoreError(LifeboatError):
    """A repository store (local directory, S3) failed."""


class IntegrityError(LifeboatError):
    """Stored data does not match its hash, or is missing."""


class RestoreError(LifeboatError):
    """A restore could not be carried out or was refused."""


class VerificationFailed(RestoreError):
    """A restore verified the restored copy and found it wrong: a FAIL (exit 1), not "could not
    verify". ``differences`` name what differs (tables, partitions, keys, objects)."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences = list(differences or [])


class UsageError(LifeboatError):
    """The command line asks for what cannot work (options that do not go together, a name that is
    not defined, an ambiguous id): the user must change the command. ``details`` are machine-readable
    facts for ``--json`` (e.g. the ids an ambiguous prefix matches)."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class RestoreUsageError(RestoreError, UsageError):
    """Restore (or verify) target options that cannot work: another kind's option, no target, two
    targets, half a member's identity. Still a RestoreError for callers that catch those."""
