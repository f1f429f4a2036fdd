"""Which snapshots a retention policy keeps: restic ``forget`` semantics, as a pure function.

``select`` takes what retention needs to know of each snapshot (``SnapshotRef``), the ``Retention``
rules of its source and the current time, and returns one ``Decision`` per snapshot, newest first,
saying whether to keep it and why. Nothing here touches a repository: the caller forgets what the
decisions say to forget.

The rule walk follows restic's ``ApplyPolicy`` (internal/restic/snapshot_policy.go): every count
rule keeps the newest snapshot of each of its most recent periods that hold a snapshot, and a rule
that still has count left when it reaches the oldest snapshot keeps that one too. Lifeboat adds
three guards on top: snapshots dated in the future are never forgotten, snapshots flagged
suspicious never use up a rule's slot, and the newest good snapshot is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from policies.durations import format_duration
from policies.model import Retention

FUTURE = "dated in the future"
NEWEST_GOOD = "newest good snapshot"
FOR_REVIEW = "suspicious: kept for review"
NO_RULE = "matches no keep rule"
SUSPICIOUS_TOO_OLD = "suspicious and older than every kept good snapshot"


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know of a snapshot. ``time`` must be timezone-aware."""

    id: str
    time: datetime
    suspicious: bool = False


@dataclass(frozen=True)
class Decision:
    """The verdict on one snapshot: ``keep`` or not, and every reason that led to it."""

    snapshot: SnapshotRef
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    """All decisions of one ``select`` call (newest first), split into what stays and what goes."""

    decisions: tuple[Decision, ...]

    @property
    def keep(self) -> list[SnapshotRef]:
        return [decision.snapshot for decision in self.decisions if decision.keep]

    @property
    def forget(self) -> list[SnapshotRef]:
        return [decision.snapshot for decision in self.decisions if not decision.keep]


# A period function names the bucket a snapshot falls in, from its UTC time and its position among
# the good snapshots (0 = newest). Two snapshots share a bucket when the names are equal; the name
# also goes into the reason, so it is written for people.
Period = Callable[[datetime, int], str]


def _position(_: datetime, position: int) -> str:
    return str(position + 1)  # every snapshot is a bucket of its own: "last 1" is the newest


def _hour(time: datetime, _: int) -> str:
    return f"{time.date().isoformat()} {time.hour:02d}:00"


def _day(time: datetime, _: int) -> str:
    return time.date().isoformat()


def _week(time: datetime, _: int) -> str:
    # The ISO year, not the calendar year: 2021-01-03 belongs to 2020-W53.
    year, week, _weekday = time.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(time: datetime, _: int) -> str:
    return f"{time.year:04d}-{time.month:02d}"


def _year(time: datetime, _: int) -> str:
    return f"{time.year:04d}"


# (rule name, period function); the count comes from the ``keep_<name>`` field of ``Retention``.
RULES: tuple[tuple[str, Period], ...] = (
    ("last", _position),
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def select(snapshots: Iterable[SnapshotRef], rules: Retention, *, now: datetime) -> list[Decision]:
    """Decide, for every snapshot, whether ``rules`` keep it.

    ``snapshots`` may come in any order and must have distinct ids and timezone-aware times; the
    periods of the rules are calendar periods in UTC. ``now`` (timezone-aware) only serves to
    recognise snapshots dated in the future. Returns one ``Decision`` per snapshot, newest first
    (equal times ordered by id, descending), each with the reasons it is kept or forgotten.
    """
    _check_aware(now, "now")
    ordered = _newest_first(snapshots)
    future = [snap for snap in ordered if snap.time > now]
    good = [snap for snap in ordered if not snap.suspicious and snap.time <= now]

    reasons: dict[str, list[str]] = {snap.id: [] for snap in ordered}
    for snap in future:
        reasons[snap.id].append(FUTURE)
    for snap, reason in _kept_by_rules(good, rules):
        reasons[snap.id].append(reason)
    if good and not reasons[good[0].id]:
        reasons[good[0].id].append(NEWEST_GOOD)

    kept_good = [snap for snap in good if reasons[snap.id]]
    for snap in ordered:
        if snap.suspicious and _worth_review(snap, kept_good):
            reasons[snap.id].append(FOR_REVIEW)
    return [_decision(snap, reasons[snap.id]) for snap in ordered]


def plan(snapshots: Iterable[SnapshotRef], rules: Retention, *, now: datetime) -> RetentionPlan:
    """``select``, wrapped so that the caller can take ``.keep`` and ``.forget`` directly."""
    return RetentionPlan(tuple(select(snapshots, rules, now=now)))


def _newest_first(snapshots: Iterable[SnapshotRef]) -> list[SnapshotRef]:
    """Sort newest first; refuse naive times and repeated ids, which would make the verdict ambiguous."""
    ordered = sorted(snapshots, key=lambda snap: (snap.time, snap.id), reverse=True)
    seen: set[str] = set()
    for snap in ordered:
        _check_aware(snap.time, f"snapshot {snap.id}")
        if snap.id in seen:
            raise ValueError(f"snapshot {snap.id} is listed twice")
        seen.add(snap.id)
    return ordered


def _check_aware(time: datetime, what: str) -> None:
    # A naive time has no place on the UTC calendar; guessing its zone could shift it into
    # another day or week, so refuse it.
    if time.tzinfo is None or time.utcoffset() is None:
        raise ValueError(f"{what}: time {time.isoformat()} has no timezone")


def _kept_by_rules(good: Sequence[SnapshotRef], rules: Retention) -> Iterator[tuple[SnapshotRef, str]]:
    """Every (snapshot, reason) pair the count rules and ``keep_within`` produce over ``good``."""
    for name, period in RULES:
        count = getattr(rules, f"keep_{name}") or 0
        yield from _walk(good, name, period, count)
    if rules.keep_within is not None and good:
        yield from _within(good, rules.keep_within)


def _walk(good: Sequence[SnapshotRef], name: str, period: Period, count: int) -> Iterator[tuple[SnapshotRef, str]]:
    """One count rule, newest to oldest: keep the first snapshot of each new period while count lasts.

    Like restic, a rule that still has count left when it reaches the oldest snapshot keeps it even
    if its period was already taken: that stretches the kept history as far back as it goes.
    """
    last: str | None = None
    for position, snap in enumerate(good):
        if count == 0:
            return
        bucket = period(snap.time.astimezone(UTC), position)
        oldest = position == len(good) - 1
        if bucket != last:
            yield snap, f"{name} {bucket}"
        elif oldest:
            yield snap, f"{name} {bucket} (oldest snapshot)"
        else:
            continue
        last = bucket
        count -= 1


def _within(good: Sequence[SnapshotRef], window: timedelta) -> Iterator[tuple[SnapshotRef, str]]:
    """Every good snapshot no older than ``window`` before the newest good one (boundary included).

    The window hangs off the newest snapshot, not off now: a source whose backups stopped keeps its
    last stretch of history instead of losing all of it once the window has passed.
    """
    start = good[0].time - window
    reason = f"within {format_duration(window)} of newest"
    for snap in good:
        if snap.time >= start:
            yield snap, reason


def _worth_review(snap: SnapshotRef, kept_good: Sequence[SnapshotRef]) -> bool:
    """A suspicious snapshot stays while it is not older than the oldest good snapshot kept.

    With no good snapshot kept at all, every suspicious one stays: forgetting them would leave
    nothing to look at.
    """
    return not kept_good or snap.time >= kept_good[-1].time


def _decision(snap: SnapshotRef, reasons: list[str]) -> Decision:
    if reasons:
        return Decision(snap, keep=True, reasons=tuple(reasons))
    forgotten_because = SUSPICIOUS_TOO_OLD if snap.suspicious else NO_RULE
    return Decision(snap, keep=False, reasons=(forgotten_because,))
