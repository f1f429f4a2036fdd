"""Recording steps: every step gets a start, an end, a verdict and a message, whatever happens.

A step's body either returns normally (PASS, with an optional message), raises ``StepFailed``
(FAIL: verified and wrong) or raises anything else (ERROR: could not verify). ``Step`` records are
appended in ``finally`` so a crash of a step still leaves its record; KeyboardInterrupt is recorded
as ERROR and re-raised so that teardown still runs above it. A step that never ran is recorded too
(``StepUnverified("not run: ...")`` or ``record_not_run``), never left silently absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from drills.model import NOT_RUN_PREFIX, Status, Step

log = structlog.get_logger(__name__)


class StepFailed(Exception):
    """The step checked something and it was wrong (verdict FAIL)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class StepUnverified(Exception):
    """The step could not check what it had to (verdict ERROR), for a known reason."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class StepOutcome:
    """What a step body may fill in: its PASS message and details."""

    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def step(steps: list[Step], name: str, *, context: dict[str, Any] | None = None) -> Iterator[StepOutcome]:
    """Run the ``with`` block as step ``name`` and append its record to ``steps``."""
    outcome = StepOutcome()
    started = datetime.now(UTC)
    verdict, message, details = Status.ERROR, "step did not finish", {}
    try:
        yield outcome
        verdict, message, details = Status.PASS, outcome.message or "ok", outcome.details
    except StepFailed as exc:
        verdict, message, details = Status.FAIL, str(exc), {**outcome.details, **exc.details}
    except StepUnverified as exc:
        verdict, message, details = Status.ERROR, str(exc), {**outcome.details, **exc.details}
    except KeyboardInterrupt:
        verdict, message = Status.ERROR, "interrupted"
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure means "could not verify", never a pass
        verdict, message, details = Status.ERROR, f"{type(exc).__name__}: {exc}", outcome.details
    finally:
        ran = not (verdict is Status.ERROR and message.startswith(NOT_RUN_PREFIX))
        record = Step(name, verdict, started, datetime.now(UTC), message, details, ran)
        steps.append(record)
        log.info(
            "drill.step",
            step=name,
            verdict=verdict.value,
            seconds=round(record.seconds, 3),
            message=message,
            **(context or {}),
        )


def record_not_run(steps: list[Step], planned: Sequence[str], *, cause: Step | None = None) -> None:
    """Record each step of ``planned`` that ``steps`` lacks as not run, in its planned place.

    The reason names ``cause``, by default the first step of ``steps`` that did not pass. A missing
    step goes right after the last recorded step planned before it (so before a trailing teardown).
    """
    cause = cause or next((done for done in steps if done.verdict is not Status.PASS), None)
    reason = f"{cause.name} ended in {cause.verdict.value}" if cause else "an earlier step did not finish"
    now = datetime.now(UTC)
    for index, name in enumerate(planned):
        if any(done.name == name for done in steps):
            continue
        before = set(planned[:index])
        at = max((n + 1 for n, done in enumerate(steps) if done.name in before), default=0)
        steps.insert(at, Step.not_run(name, reason, now))
