"""What Lifeboat's notifications say: every subject, body and summary, in one place.

A drill run's notification carries its reports (``drills.report``); a failure (``backup-failure``,
``check-failure``, ``suspicious``) is told once per incident, with a footer saying that repeats are
counted, not sent, until the recovery note (``lifeboat.operations`` decides when each is sent).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from backup.jobs import BackupResult
from drills.model import DrillRun, Status
from lifeboat.forecast import METHOD, DrillForecast
from lifeboat.notify.base import Attachment, Notification
from lifeboat.state.damage import StateDamage
from lifeboat.state.records import utc_now
from policies.durations import human_duration

PROBLEMS_KEPT = 50  # check problems kept in a run's figures and a notification's summary (the CLI prints them all)
PROBLEMS_LISTED = 20  # check problems listed in a notification's text

# What has recovered when an incident of each event closes; ``{name}`` is the source's.
RECOVERED = {
    "backup-failure": "backups of {name} succeed again",
    "suspicious": "snapshots of {name} look normal again",
    "check-failure": "the repository check passes again",
    "rto-forecast": "the RTO forecast of drill {name} is within its objective again",
}


# ---- drills ----------------------------------------------------------------------------------------


def drill_event(run: DrillRun) -> str:
    """``drill`` for a PASS run, ``drill-failure`` for FAIL and ERROR (an unverified run is a failure to prove)."""
    return "drill" if run.verdict is Status.PASS else "drill-failure"


def drill_notification(run: DrillRun, *, history: Sequence[DrillRun] = ()) -> Notification:
    """The notification of a drill run: subject line, text summary, the mail-client HTML (failures
    first, the last runs of ``history`` as a table), and attached the full HTML page (with trend
    charts over ``history``, earlier runs of the drill), the JSON and the JUnit reports; event
    ``drill`` or ``drill-failure``."""
    # the report renderers only when a drill ran, not for every backup's notification (issue 22)
    from drills.report import (
        render_email_html,
        render_html,
        render_json,
        render_junit,
        render_text,
        report_file_names,
        subject_line,
    )

    names = report_file_names(run)
    return Notification(
        event=drill_event(run),
        subject=subject_line(run),
        text=render_text(run),
        html=render_email_html(run, history),
        attachments=(
            Attachment(names["html"], render_html(run, history).encode("utf-8"), "text/html"),
            Attachment(names["json"], render_json(run).encode("utf-8"), "application/json"),
            Attachment(names["junit"], render_junit(run).encode("utf-8"), "application/xml"),
        ),
        summary=run.to_dict(),
    )


# ---- incidents -------------------------------------------------------------------------------------


def _footer(event: str) -> str:
    return (
        f"\n\nHost: {socket.gethostname()}. Later failures of this kind are counted, not mailed, until one succeeds "
        f"again; a recovery note follows then. History: `lifeboat status`. (Lifeboat event: {event})\n"
    )


def backup_failure_message(name: str, error: str) -> Notification:
    """A backup of source ``name`` failed with ``error`` (secrets already masked)."""
    return Notification(
        event="backup-failure",
        subject=f"[lifeboat] backup of {name} FAILED",
        text=f"The backup of source '{name}' failed at {utc_now():%Y-%m-%d %H:%M:%S} UTC; nothing was committed.\n\n"
        f"{error}" + _footer("backup-failure"),
        summary={"event": "backup-failure", "source": name, "error": error, "recovered": False},
    )


def restore_point_failure_message(name: str, error: str) -> Notification:
    """Restore point ``name`` could not be committed (its members' own failures notify as theirs)."""
    return Notification(
        event="backup-failure",
        subject=f"[lifeboat] restore point {name} FAILED",
        text=f"The restore point '{name}' could not be committed at {utc_now():%Y-%m-%d %H:%M:%S} UTC; its members'"
        f" snapshots that committed stay ordinary snapshots.\n\n{error}" + _footer("backup-failure"),
        summary={"event": "backup-failure", "restore_point": name, "error": error, "recovered": False},
    )


def suspicious_message(result: BackupResult) -> Notification:
    """A backup committed a snapshot that looks like mass deletion (``result.anomalies`` say why)."""
    header = result.header
    reasons = "\n".join(f"- {anomaly}" for anomaly in result.anomalies)
    return Notification(
        event="suspicious",
        subject=f"[lifeboat] {header.source}: snapshot {header.id} is SUSPICIOUS",
        text=f"Snapshot {header.id} of '{header.source}' looks like mass deletion or ransomware:\n{reasons}\n\n"
        "It is kept, flagged suspicious: it never becomes the newest good snapshot for retention or drills. "
        "Look at the source now." + _footer("suspicious"),
        summary={"event": "suspicious", "source": header.source, "snapshot": header.id, "anomalies": result.anomalies},
    )


def check_failure_message(problems: list[str]) -> Notification:
    """The repository check found ``problems`` (or could not run: one problem, its error)."""
    listed = "\n".join(f"- {problem}" for problem in problems[:PROBLEMS_LISTED])
    more = f"\n... and {len(problems) - PROBLEMS_LISTED} more" if len(problems) > PROBLEMS_LISTED else ""
    return Notification(
        event="check-failure",
        subject=f"[lifeboat] repository check FAILED: {len(problems)} problem(s)",
        text=f"The repository check found:\n{listed}{more}" + _footer("check-failure"),
        summary={"event": "check-failure", "problems": problems[:PROBLEMS_KEPT], "recovered": False},
    )


def state_damaged_message(state: str, damage: StateDamage) -> Notification:
    """The state DB ``state`` was found damaged and moved aside (``damage``); backups go on in a fresh one."""
    return Notification(
        event="state-damaged",
        subject=f"[lifeboat] state DB {state} was DAMAGED and replaced",
        text=f"Lifeboat found its state DB {state} damaged at {damage.found:%Y-%m-%d %H:%M:%S} UTC: {damage.reason}.\n\n"
        f"The damaged file was moved to {damage.moved_to} (with its -wal, if it held anything) and a fresh state DB "
        "was made: backups, prunes and drills go on, and the run history starts again from then. Snapshots are "
        "not affected (they live in the repository). Keep the damaged file to inspect it (sqlite3 .recover), "
        "and look at the disk it lives on.\n\n"
        f"Host: {socket.gethostname()}. `lifeboat status` shows this too. (Lifeboat event: state-damaged)\n",
        summary={"event": "state-damaged", "state": state, **damage.as_dict()},
    )


def recovery_message(event: str, name: str, occurrences: int, since: str) -> Notification:
    """The incident ``event`` of ``name``, open since ``since`` over ``occurrences`` failed runs, is over."""
    what = RECOVERED[event].format(name=name)
    return Notification(
        event=event,
        subject=f"[lifeboat] recovered: {what}",
        text=f"Recovered: {what} (at {utc_now():%Y-%m-%d %H:%M:%S} UTC), after {occurrences} failed run(s) "
        f"since {since}.\n(Lifeboat event: {event})\n",
        summary={"event": event, "name": name, "recovered": True, "occurrences": occurrences, "since": since},
    )


def rto_forecast_message(forecast: DrillForecast, measured: float) -> Notification:
    """Drill ``forecast.drill`` still meets its RTO objective (``measured`` seconds now), but its forecast
    for next month does not: told once, before a drill fails it."""
    objective, seconds = forecast.objective_seconds, forecast.seconds or 0.0
    crossing = f"{forecast.crossing:%Y-%m-%d}" if forecast.crossing else "within the month"
    per_source = "\n".join(f"- {name}: {human_duration(value)}" for name, value in forecast.sources.items())
    return Notification(
        event="rto-forecast",
        subject=f"[lifeboat] {forecast.drill}: RTO forecast {human_duration(seconds)} will exceed the objective "
        f"{human_duration(objective)} around {crossing}",
        text=f"Drill '{forecast.drill}' restores within its RTO objective today ({human_duration(measured)} of "
        f"{human_duration(objective)}), but at the present trends its restores will take {human_duration(seconds)} "
        f"by {forecast.at:%Y-%m-%d}, crossing the objective around {crossing}.\n\nForecast per source:\n{per_source}\n\n"
        f"Method: {METHOD}.\nAct before a drill fails: faster restores (more parallelism, a closer repository), "
        "smaller sources, or a new objective." + _footer("rto-forecast"),
        summary={"event": "rto-forecast", **forecast.as_dict(), "measured_seconds": measured, "recovered": False},
    )
