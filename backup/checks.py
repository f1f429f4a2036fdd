"""Drill checks on a source's data, judged once for every kind (README "Drill checks").

A kind's check runner (``SourceKind.checks``, backup/sources/<kind>/checks.py) only observes: it
runs a check against the live source or a restored copy and says what it saw (``Observation``).
Here that is judged against the check's expectation. Backup time is here too: ``same_as_source``
checks are observed on the source and the result stored in the manifest (meta ``checks``), and
``at_backup`` checks run against the source, a failure flagging the snapshot suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from backup.sources import check_runner
from backup.sources.base import CheckRunner, Observation, Source
from policies.errors import LifeboatError, SourceError
from policies.model import SourceCheck, SourceSettings

log = structlog.get_logger(__name__)
CHECKS_META = "checks"  # the manifest meta key of the results captured at backup time, by check name


class CheckCannotRun(SourceError):
    """A check could not be run or judged (bad SQL, no captured result, a result that is no number)."""


@dataclass(frozen=True)
class Judgement:
    passed: bool
    message: str  # what was expected and what was seen


def judge(check: SourceCheck, seen: Observation, captured: Observation | None) -> Judgement:
    """``seen`` against ``check.expect`` (``captured``: the snapshot's result, for same_as_source).
    Raises CheckCannotRun when the expectation cannot be judged on what was seen."""
    expect = check.expect
    wanted: list[str] = []
    passed = True
    if expect.exists:
        wanted.append("exists")
        passed &= seen.count >= 1
    if expect.rows_min is not None:
        wanted.append(f"at least {expect.rows_min} row(s)")
        passed &= seen.count >= expect.rows_min
    if expect.min_bytes is not None:
        wanted.append(f"at least {expect.min_bytes} bytes")
        passed &= seen.bytes >= expect.min_bytes
    if expect.min is not None:
        wanted.append(f">= {expect.min:g}")
        passed &= _number(seen) >= expect.min
    if expect.max is not None:
        wanted.append(f"<= {expect.max:g}")
        passed &= _number(seen) <= expect.max
    if "equals" in expect.given:
        wanted.append(f"= {expect.equals!r}{_within(check.tolerance)}")
        passed &= same_value(seen.value, expect.equals, check.tolerance)
    if expect.same_as_source:
        if captured is None:
            raise CheckCannotRun("the snapshot holds no result captured at backup time to compare with")
        wanted.append(f"{captured.shown} as at backup time{_within(check.tolerance)}")
        passed &= same_value(seen.value, captured.value, check.tolerance)
    return Judgement(passed, f"expected {', '.join(wanted)}; seen {seen.shown}")


def same_value(seen: Any, expected: Any, tolerance: float | None) -> bool:
    """Equal, or for two numbers within ``tolerance`` (relative to ``expected``)."""
    if _is_number(seen) and _is_number(expected):
        return abs(float(seen) - float(expected)) <= (tolerance or 0) * abs(float(expected))
    return bool(seen == expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(seen: Observation) -> float:
    if not _is_number(seen.value):
        raise CheckCannotRun(f"min/max compare a number, and the check gave {seen.shown}")
    return float(seen.value)


def _within(tolerance: float | None) -> str:
    return f" (within {tolerance:.2%})" if tolerance else ""


def runner_for(kind: str) -> CheckRunner:
    runner = check_runner(kind)
    if runner is None:
        raise CheckCannotRun(f"{kind} sources have no drill checks")
    return runner


def captured_result(header_meta: dict[str, Any], name: str) -> Observation | None:
    """The result of check ``name`` a snapshot's manifest holds; CheckCannotRun when the capture failed."""
    document = (header_meta.get(CHECKS_META) or {}).get(name)
    if document is None:
        return None
    if "error" in document:
        raise CheckCannotRun(f"the source could not be read for it at backup time: {document['error']}")
    return Observation.from_dict(document)


def checks_at_backup(source: Source, settings: SourceSettings) -> tuple[dict[str, Any], list[str]]:
    """Run a source's checks that backup time needs, against the source itself (read-only): the
    ``same_as_source`` ones whose result the manifest keeps (their meta ``checks``), and the
    ``at_backup`` ones. Returns (meta ``checks``, problems that make the snapshot suspicious)."""
    captured: dict[str, Any] = {}
    problems: list[str] = []
    if not settings.checks:
        return captured, problems
    runner = runner_for(settings.kind)
    for check in settings.checks:
        capture = check.expect.same_as_source and runner.captures_at_backup
        if not capture and not check.at_backup:
            continue
        try:
            seen = runner.on_source(source, check)
            if capture:
                captured[check.name] = seen.as_dict()
            elif not (judgement := judge(check, seen, None)).passed:
                problems.append(f"check {check.name} failed on the source at backup time: {judgement.message}")
        except LifeboatError as exc:
            if capture:
                captured[check.name] = {"error": str(exc)}
            if check.at_backup:
                problems.append(f"check {check.name} could not run on the source at backup time: {exc}")
        log.info("check.at_backup", source=source.name, check=check.name, captured=capture)
    return captured, problems
