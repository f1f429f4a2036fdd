"""``lifeboat serve`` and ``lifeboat status``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import datetime
from typing import Any

import click

from lifeboat.context import Session, json_option, pass_session, print_json
from lifeboat.forecast import forecasts
from lifeboat.operations import open_operations
from lifeboat.service import ServiceError
from lifeboat.service.cron import next_fire_times
from lifeboat.service.instance_lock import running_service_pid
from lifeboat.service.jobs import job_specs
from lifeboat.state.history import RunHistory
from lifeboat.state.records import DRILL_VERDICTS, REPOSITORY_NAME, SCRATCH_NAME, RunKind, RunRecord, RunStatus, utc_now
from policies.durations import human_duration
from policies.errors import LifeboatError
from policies.model import Policy
from policies.sizes import human_bytes

NEXT_RUNS = 3  # fire times listed per job in ``status --json``
EXIT_ABORT_INCOMPLETE = 1

# Jobs of the whole repository or scratch, by run kind and the run name they are recorded under.
MAINTENANCE = ((RunKind.PRUNE, REPOSITORY_NAME), (RunKind.CHECK, REPOSITORY_NAME), (RunKind.JANITOR, SCRATCH_NAME))


@click.command()
@click.option(
    "--run-now",
    "run_now",
    multiple=True,
    metavar="JOB",
    help="Also run this job right after starting (repeatable): backup:<source>, prune, check, drill:<name>.",
)
@click.option(
    "--reload",
    "reload_running",
    is_flag=True,
    help="Do not serve: validate the policy file, then tell the running service to re-read it (SIGHUP).",
)
@pass_session
def serve(session: Session, run_now: tuple[str, ...], reload_running: bool) -> None:
    """Run the scheduler with /healthz and /metrics until SIGTERM or SIGINT (exit 0).

    SIGHUP re-reads the policy file; a file with errors is refused and the old schedule keeps running.
    On SIGTERM the running jobs get service.stop_timeout to finish, then are aborted cleanly.
    """
    policy = session.policy()
    if reload_running:
        _signal_reload(session, policy)
        return
    from lifeboat.service.serve import LifeboatService  # the scheduler and /metrics: not for `status`

    service = LifeboatService(session.config_path, redactor=session.redactor, policy=policy)
    unknown = sorted(set(run_now) - set(service.job_ids()))
    if unknown:
        raise click.UsageError(f"no job {', '.join(unknown)}; scheduled jobs: {', '.join(service.job_ids()) or 'none'}")
    if not service.serve_forever(run_now=run_now):
        # A job thread is stuck in a C call and cannot be unwound: leave without waiting for it
        # (what stayed behind is described in lifeboat/service/abort.py). Flush the logs first.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(EXIT_ABORT_INCOMPLETE)


def _signal_reload(session: Session, policy: Policy) -> None:
    pid = running_service_pid(policy.state)
    if pid is None:
        raise ServiceError(f"no `lifeboat serve` is running with the state DB {policy.state} on this machine")
    if pid <= 0:
        raise ServiceError(f"a `lifeboat serve` uses the state DB {policy.state}, but its pid cannot be read")
    os.kill(pid, signal.SIGHUP)
    click.echo(f"{session.config_path}: OK; asked lifeboat serve (pid {pid}) to re-read its policy file")


@click.command()
@json_option(help="Print the status as one JSON document on stdout.")
@pass_session
def status(session: Session, as_json: bool) -> None:
    """Per source: last success and failure, snapshots, next runs; per drill: the last verdict.

    Reads the state DB (runs of dead processes show as interrupted) and lists the repository;
    a repository that cannot be listed is reported, not fatal."""
    policy = session.policy()
    now = utc_now()
    counts, listing_error = _snapshot_counts(session)
    with open_operations(policy, redact=session.redactor.text) as operations:  # a damaged DB: replaced, told
        document = status_document(policy, operations.history, counts, now=now)
    document["repository"]["error"] = listing_error
    if as_json:
        print_json(document)
    else:
        _print_status(document)


def _snapshot_counts(session: Session) -> tuple[dict[str, tuple[int, int, int]] | None, str | None]:
    """``{source: (snapshots, suspicious, bytes)}`` from a repository listing, or None and why not."""
    try:
        headers = session.repository().list_snapshots()
    except LifeboatError as exc:
        return None, session.redactor.text(str(exc))
    counts: dict[str, tuple[int, int, int]] = {}
    for header in headers:
        total, suspicious, size = counts.get(header.source, (0, 0, 0))
        counts[header.source] = (total + 1, suspicious + (header.status == "suspicious"), size + header.size)
    return counts, None


def status_document(
    policy: Policy, history: RunHistory, counts: dict[str, tuple[int, int, int]] | None, *, now: datetime
) -> dict[str, Any]:
    """The ``status --json`` document (``counts`` None: the repository could not be listed)."""
    schedules = {spec.id: spec.schedule for spec in job_specs(policy)}

    def upcoming(job_id: str) -> list[str]:
        schedule = schedules.get(job_id)
        return [moment.isoformat() for moment in next_fire_times(schedule, now=now)] if schedule else []

    def run(record: RunRecord | None) -> dict[str, Any] | None:
        return record.as_dict() if record else None

    sources = []
    for name, source in policy.sources.items():
        total, suspicious, size = (counts or {}).get(name, (0, 0, 0))
        sources.append(
            {
                "source": name,
                "kind": source.kind,
                "schedule": source.schedule,
                "next_runs": upcoming(f"backup:{name}"),
                "snapshots": total if counts is not None else None,
                "suspicious": suspicious if counts is not None else None,
                "size": size if counts is not None else None,
                "last_success": run(history.last_run(RunKind.BACKUP, name, [RunStatus.OK])),
                "last_failure": run(history.last_run(RunKind.BACKUP, name, [RunStatus.FAILED])),
                "last_run": run(history.last_run(RunKind.BACKUP, name)),
            }
        )
    maintenance = {
        kind.value: {
            "schedule": schedules.get(kind.value),
            "next_runs": upcoming(kind.value),
            "last_success": run(history.last_run(kind, name, [RunStatus.OK])),
            "last_failure": run(history.last_run(kind, name, [RunStatus.FAILED])),
            "last_run": run(history.last_run(kind, name)),
        }
        for kind, name in MAINTENANCE
    }
    drills = []
    forecast = forecasts(policy, history, now=now)
    for name, drill in policy.drills.items():
        verdict = history.last_run(RunKind.DRILL, name, DRILL_VERDICTS)
        drills.append(
            {
                "drill": name,
                "sources": drill.sources,
                "schedule": drill.schedule,
                "next_runs": upcoming(f"drill:{name}"),
                "last_verdict": verdict.status.value if verdict else None,
                "last_verdict_run": run(verdict),
                "last_run": run(history.last_run(RunKind.DRILL, name)),
                "rto_forecast": forecast[name].as_dict(),
            }
        )
    service_pid = running_service_pid(policy.state)
    return {
        "generated": now.isoformat(),
        "state": str(policy.state),
        "state_damage": damage.as_dict() if (damage := history.damage()) else None,
        "service": {"running": service_pid is not None, "pid": service_pid if service_pid and service_pid > 0 else None},
        "repository": {"url": policy.repository.url, "error": None},
        "evidence": {
            "on": policy.evidence.signing_key is not None,
            "why": "signed records under evidence/ in the repository"
            if policy.evidence.signing_key is not None
            else "off: no evidence.signing_key in the policy (`lifeboat evidence keygen` makes one)",
        },
        "sources": sources,
        **maintenance,
        "drills": drills,
        "incidents": [incident.as_dict() for incident in history.open_incidents()],
        "recent_runs": [record.as_dict() for record in history.runs(limit=10)],
    }


# ---- text -------------------------------------------------------------------------------------------


def _print_status(document: dict[str, Any]) -> None:
    service = document["service"]
    running = f"lifeboat serve is running (pid {service['pid']})" if service["running"] else "no lifeboat serve running"
    click.echo(f"state {document['state']}; {running}; repository {document['repository']['url']}")
    damage = document["state_damage"]
    if damage:
        click.echo(
            f"  WARNING: the state DB was damaged ({damage['reason']}) and was moved to {damage['moved_to']} at "
            f"{damage['found']}; the run history starts again from then"
        )
    if document["repository"]["error"]:
        click.echo(f"  repository not listed: {document['repository']['error']}")
    rows: list[tuple[str, ...]] = [
        ("SOURCE", "KIND", "SNAPSHOTS", "LAST SUCCESS", "LAST FAILURE", "LAST RUN", "NEXT RUN (UTC)")
    ]
    for item in document["sources"]:
        snapshots = "?" if item["snapshots"] is None else str(item["snapshots"])
        if item["suspicious"]:
            snapshots += f" ({item['suspicious']} suspicious)"
        if item["size"]:
            snapshots += f", {human_bytes(item['size'])}"
        rows.append(
            (
                item["source"],
                item["kind"],
                snapshots,
                _when(item["last_success"]),
                _when(item["last_failure"]),
                _status(item["last_run"]),
                _first(item["next_runs"]),
            )
        )
    _table(rows)
    for kind in ("prune", "check", "janitor"):
        item = document[kind]
        click.echo(
            f"{kind}: last success {_when(item['last_success'])}, last failure {_when(item['last_failure'])}, "
            f"last run {_status(item['last_run'])}; next {_first(item['next_runs'])}"
        )
    if document["drills"]:
        rows = [("DRILL", "SOURCES", "LAST VERDICT", "AT", "RTO", "LAST RUN", "NEXT RUN (UTC)")]
        for item in document["drills"]:
            proven = item["last_verdict_run"]
            rto = proven["figures"].get("rto_seconds") if proven else None
            rows.append(
                (
                    item["drill"],
                    ",".join(item["sources"]),
                    item["last_verdict"] or "-",
                    _when(proven),
                    "-" if rto is None else human_duration(rto),
                    _status(item["last_run"]),  # an interrupted or running one shows here
                    _first(item["next_runs"]),
                )
            )
        _table(rows)
        for item in document["drills"]:
            click.echo(_forecast_line(item["rto_forecast"]))
    click.echo(f"evidence: {'on, ' if document['evidence']['on'] else ''}{document['evidence']['why']}")
    for incident in document["incidents"]:
        click.echo(
            f"OPEN INCIDENT {incident['event']} {incident['name']}: since {incident['opened'][:19]}, "
            f"{incident['occurrences']} failed run(s); {incident['message'].splitlines()[0] if incident['message'] else ''}"
        )


def _forecast_line(forecast: dict[str, Any]) -> str:
    drill = forecast["drill"]
    if forecast["rto_seconds"] is None:
        return f"RTO forecast {drill}: not yet (needs two drill runs with a measured restore)"
    crossing = forecast["crossing"]
    over = f"crosses the objective around {crossing[:10]}" if crossing else "within the objective for a year"
    return (
        f"RTO forecast {drill}: {human_duration(forecast['rto_seconds'])} by {forecast['at'][:10]} "
        f"(objective {human_duration(forecast['objective_seconds'])}); {over}"
    )


def _when(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    moment = run["finished"] or run["started"]
    return str(moment)[:16].replace("T", " ")


def _status(run: dict[str, Any] | None) -> str:
    return "-" if not run else f"{run['status']} ({_when(run)})"


def _first(times: list[str]) -> str:
    return times[0][:16].replace("T", " ") if times else "not scheduled"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
