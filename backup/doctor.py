"""What ``lifeboat doctor`` finds: one ``Finding`` per check, made by each plug-in family's own checks.

Every family keeps its checks beside its code (a source kind's in ``backup/sources/<kind>/doctor.py``,
named by its ``SourceKind.doctor``; the repository's in ``backup/repository/doctor.py``; the notifiers'
as a ``doctor`` method of each notifier kind). A check is a short function run through ``probe``:
whatever it raises becomes a FAIL (or, for ``Concern``, a WARN) with the message and what to fix,
never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DOCTOR_TIMEOUT = 10.0  # seconds any one network call of a check may take


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``target`` (``repository``, ``source etcd-main``...), ``check`` (what was
    tried), ``status``, ``message`` (what was found) and ``fix`` (what to change; empty on PASS)."""

    target: str
    check: str
    status: Status
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "check": self.check,
            "status": str(self.status),
            "message": self.message,
            "fix": self.fix,
        }


class Problem(Exception):
    """Raised by a check that failed: what was found and what to fix."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


class Concern(Problem):
    """Raised by a check whose finding will not stop a backup but deserves a look (a WARN)."""


def probe(target: str, check: str, attempt: Callable[[], str], *, fix: str = "") -> Finding:
    """Run ``attempt`` (which returns what it found) as the check ``check`` of ``target``.

    A ``Concern`` is a WARN, a ``Problem`` a FAIL with its own fix; any other exception is a FAIL
    with its text and ``fix``. Never raises."""
    try:
        return Finding(target, check, Status.PASS, attempt())
    except Concern as exc:
        return Finding(target, check, Status.WARN, exc.message, exc.fix or fix)
    except Problem as exc:
        return Finding(target, check, Status.FAIL, exc.message, exc.fix or fix)
    except Exception as exc:  # noqa: BLE001 - a check reports what went wrong, whatever it was
        return Finding(target, check, Status.FAIL, _describe(exc), fix)


def failed(findings: list[Finding]) -> bool:
    """True when any finding is a FAIL."""
    return any(finding.status is Status.FAIL for finding in findings)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
