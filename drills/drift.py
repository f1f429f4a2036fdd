"""The drift check (issue 13, item 8): did a snapshot see the whole of its source?

Nothing in a backup path can prove a listing complete: an S3 endpoint that ends a listing early and
says it is done (``IsTruncated: false`` halfway) gives a faithful copy of half a bucket, and a
restore of it verifies. What a drill can do independently is set the snapshot's census beside two
other readings: the live source now (``Source.census()``, reads only: a listing, system.parts, a
keys-only range) and the previous good snapshot of the source. The rule, for every measure
(objects, bytes, rows, keys) of the totals and of every group (bucket, table, etcd resource, prefix,
namespace):

    FAIL when the snapshot holds markedly less than the live source now
         AND markedly less than the previous good snapshot.

* A partial snapshot is short of what was there before and of what is there now: FAIL.
* A source that really shrank (deletions before the snapshot): the previous snapshot holds more,
  but the live source holds no more than the snapshot: PASS.
* A source that grew since the snapshot: the live source holds more, the previous snapshot no more
  than this one: PASS.
* A source that shrank and then grew back between two snapshots cannot be told from a partial
  snapshot: FAIL, a false alarm worth a look.
* No earlier good snapshot: growth since the snapshot cannot be told from a short snapshot, so a
  shortfall against the live source alone is reported in the message, not failed.

"Markedly" is the policy's ``drills.<name>.drift`` (``DriftThresholds``): short by more than
``max_missing_fraction`` of the reading compared with and by at least ``min_missing_items``
(``min_missing_bytes`` for bytes). A group the snapshot's census map lacks counts 0; a measure one
of the three readings lacks (a ClickHouse export's bytes: the live server has no such figure) is not
compared. The live source cannot be read: ERROR, never PASS.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository, SnapshotNotFound
from backup.sources.base import Source
from drills.steps import StepFailed, StepOutcome, StepUnverified
from policies.model import DriftThresholds

# The census maps compared, in the order their shortfalls are named, and how one member is called.
GROUP_LABELS = {
    "buckets": "bucket",
    "tables": "table",
    "resources": "resource",
    "namespaces": "namespace",
    "prefixes": "prefix",
}
TOTAL = "total"
SHOWN = 8  # shortfalls named in the message; the details hold every one (up to LISTED)
LISTED = 100

Counts = dict[str, int]  # measure -> count


@dataclass(frozen=True)
class Reading:
    """One census as comparable numbers: totals, and per group kind each member's counts."""

    totals: Counts
    groups: dict[str, dict[str, Counts]] = field(default_factory=dict)

    @classmethod
    def of(cls, census: Mapping[str, Any]) -> Reading:
        """From a snapshot's (or ``Source.census()``'s) census. A group map of plain numbers (etcd's
        keys per resource) counts the census's one total measure."""
        totals = _counts(census.get("totals"))
        groups: dict[str, dict[str, Counts]] = {}
        for kind in GROUP_LABELS:
            members = census.get(kind)
            if not isinstance(members, Mapping):
                continue
            if all(isinstance(value, int) for value in members.values()):
                if len(totals) != 1:
                    continue
                [measure] = totals
                groups[kind] = {str(name): {measure: int(value)} for name, value in members.items()}
            else:
                groups[kind] = {str(name): _counts(value) for name, value in members.items()}
        return cls(totals, groups)

    def describe(self) -> str:
        return ", ".join(f"{count} {measure}" for measure, count in self.totals.items()) or "nothing counted"


def _counts(value: Any) -> Counts:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclass(frozen=True)
class Shortfall:
    """A measure of which the snapshot holds markedly less than both the live source and the previous snapshot."""

    where: str  # "total", "bucket models", "table features.events", "resource pods"
    measure: str
    snapshot: int
    live: int
    previous: int

    @property
    def reference(self) -> int:
        return min(self.live, self.previous)

    @property
    def missing_fraction(self) -> float:
        return (self.reference - self.snapshot) / self.reference

    def describe(self) -> str:
        return f"{self.where}: {self.snapshot} of {self.reference} {self.measure}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "measure": self.measure,
            "snapshot": self.snapshot,
            "live": self.live,
            "previous": self.previous,
        }


def markedly_less(value: int, reference: int, measure: str, thresholds: DriftThresholds) -> bool:
    """Whether ``value`` falls short of ``reference`` by more than the thresholds allow."""
    missing = reference - value
    floor = thresholds.min_missing_bytes if measure == "bytes" else thresholds.min_missing_items
    return missing >= floor and missing > thresholds.max_missing_fraction * reference


def find_shortfalls(snapshot: Reading, live: Reading, previous: Reading, thresholds: DriftThresholds) -> list[Shortfall]:
    """Every (group or total, measure) of which ``snapshot`` holds markedly less than both ``live``
    and ``previous``, the most telling first: groups before totals, the largest share missing first."""
    found = []
    for where, held, now, before in _aligned(snapshot, live, previous, thresholds.ignore):
        measures = set(now) & set(before)
        if held or where == TOTAL:  # a member the snapshot lacks holds 0; a measure it does not record is not compared
            measures &= set(held)
        for measure in sorted(measures):
            value = held.get(measure, 0)
            if markedly_less(value, now[measure], measure, thresholds) and markedly_less(
                value, before[measure], measure, thresholds
            ):
                found.append(Shortfall(where, measure, value, now[measure], before[measure]))
    order = {label: index for index, label in enumerate([*GROUP_LABELS.values(), TOTAL])}
    return sorted(found, key=lambda s: (s.where == TOTAL, -s.missing_fraction, order[s.where.split(" ")[0]], s.where))


def _aligned(
    snapshot: Reading, live: Reading, previous: Reading, ignore: Sequence[str]
) -> Iterator[tuple[str, Counts, Counts, Counts]]:
    """(where, snapshot's, live's, previous's counts) of the totals and of every group member the
    live source or the previous snapshot has, for group kinds all three readings carry."""
    yield TOTAL, snapshot.totals, live.totals, previous.totals
    for kind, label in GROUP_LABELS.items():
        if kind not in snapshot.groups or kind not in live.groups or kind not in previous.groups:
            continue
        held, now, before = snapshot.groups[kind], live.groups[kind], previous.groups[kind]
        for name in sorted(set(now) | set(before)):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore):
                continue
            yield f"{label} {name}", held.get(name, {}), now.get(name, {}), before.get(name, {})


def previous_snapshot(repository: Repository, header: SnapshotHeader) -> SnapshotHeader | None:
    """The newest good snapshot of ``header``'s source taken before it (of the same kind), if any."""
    try:
        found = repository.find_snapshot(header.source, at=header.started - timedelta(microseconds=1))
    except SnapshotNotFound:
        return None
    return found if found.kind == header.kind and found.id != header.id else None


def check_drift(
    source: Source, repository: Repository, header: SnapshotHeader, thresholds: DriftThresholds, outcome: StepOutcome
) -> None:
    """The drift step's body: compare ``header``'s census with ``source.census()`` (read now) and the
    previous good snapshot's (the module docstring gives the rule). Fills ``outcome`` on a PASS;
    raises StepFailed naming every shortfall, StepUnverified when the snapshot has no census or the
    live source cannot be read."""
    snapshot = Reading.of(header.census)
    if not snapshot.totals:
        raise StepUnverified(f"snapshot {header.id} records no census to compare with the live source")
    try:
        live = Reading.of(source.census())
    except Exception as exc:  # whatever stops the reading, nothing was compared: ERROR
        raise StepUnverified(f"could not read the live source '{source.name}' to compare: {exc}") from exc
    before = previous_snapshot(repository, header)
    outcome.details = {
        "snapshot": {"id": header.id, **snapshot.totals},
        "live": live.totals,
        "previous": {"id": before.id, **before.census.get("totals", {})} if before is not None else None,
        "thresholds": thresholds.model_dump(),
    }
    readings = f"the snapshot holds {snapshot.describe()}, the live source now {live.describe()}"
    if before is None:
        short = [s.describe() for s in find_shortfalls(snapshot, live, live, thresholds)]
        outcome.details["short_of_live"] = short[:LISTED]
        outcome.message = (
            f"{readings}; no earlier good snapshot of '{header.source}' to tell growth since from a short "
            "snapshot, so the live source alone fails nothing"
            + (f" (short of it: {'; '.join(short[:SHOWN])})" if short else "")
        )
        return
    previous = Reading.of(before.census)
    readings += f", the previous snapshot {before.id} {previous.describe()}"
    shortfalls = find_shortfalls(snapshot, live, previous, thresholds)
    if shortfalls:
        named = "; ".join(s.describe() for s in shortfalls[:SHOWN])
        more = f"; and {len(shortfalls) - SHOWN} more" if len(shortfalls) > SHOWN else ""
        raise StepFailed(
            f"snapshot holds markedly less than both the live source now and the previous snapshot: {named}{more}\n"
            f"{readings}. A listing or export that ended early looks like this; a source that shrank and grew "
            "back between two snapshots does too.",
            shortfalls=[s.as_dict() for s in shortfalls[:LISTED]],
        )
    outcome.message = f"{readings}: nothing markedly missing against both"
