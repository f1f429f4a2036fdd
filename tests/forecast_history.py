"""A run history in which source ``lake`` grows every day while its restores keep the same throughput,
for the RTO forecast tests: drill ``nightly`` (objective 10m) and a backup of ``lake`` once a day.

On day ``i`` (the newest run is today, i = DAYS - 1) the snapshot holds 100 MB + 20 MB * i and restores
at 1 MB/s, so the RTO is 100 s + 20 s * i: 280 s today, 880 s thirty days from now, and it crosses
the 600 s objective 16 days from now.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from drills.model import Status
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus

DAYS = 10
MB = 1_000_000
OBJECTIVE = "10m"
CROSSING_AFTER = timedelta(days=16)
FORECAST_SECONDS = 100 + 20 * (DAYS - 1 + 30)


def size_on(day: int) -> int:
    return 100 * MB + 20 * MB * day


def seed_growing_source(history: RunHistory, *, now: datetime) -> None:
    """The drill and backup runs of the last ``DAYS`` days (the newest ends at ``now``)."""
    for day in range(DAYS):
        at = now - timedelta(days=DAYS - 1 - day)
        backup = history.start_run(RunKind.BACKUP, "lake", origin="service", started=at - timedelta(hours=1))
        history.finish_run(backup, RunStatus.OK, figures={"size": size_on(day)}, finished=at - timedelta(minutes=50))
        rto = size_on(day) / MB
        item = {"source": "lake", "verdict": "PASS", "rto_seconds": rto, "bytes": size_on(day)}
        drill = history.start_run(RunKind.DRILL, "nightly", origin="service", started=at - timedelta(seconds=rto))
        history.finish_run(drill, Status.PASS, figures={"rto_seconds": rto, "sources": [item]}, finished=at)
