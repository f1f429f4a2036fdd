"""What every kind's shard merge shares (kind-independent): the ``Merging`` a merge gets, and the
rules that put the parts' documents together.

A sharded run (backup/repository/parts.py) leaves one part per shard; ``backup.jobs.merge_parts``
hands them to the kind's merge, ``merge(Merging) -> SnapshotOutcome``, which the kind declares in its
kind.py (``SourceKind.part_merge``). A part's meta keeps, under ``PART_META``, its run,
shard, base snapshot, figures and write stats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backup.repository.manifest import Entry, SnapshotHeader

PART_META = "part"  # a part manifest's meta: its run, shard, base snapshot, figures and write stats


@dataclass(frozen=True)
class Merging:
    """What a kind's merge gets: the newest good snapshot before the merge (the anomaly guard's and
    the changed share's base), the parts by shard, their entries, and ``add`` for the merged entries
    (in the order the kind's snapshots keep)."""

    previous: SnapshotHeader | None
    parts: list[SnapshotHeader]
    streams: list[Iterator[Entry]]
    add: Callable[[Entry], None]


def own_meta(part: SnapshotHeader) -> dict[str, Any]:
    """A part's meta without the part record: what the source itself wrote."""
    return {key: value for key, value in part.meta.items() if key != PART_META}


def add_up(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers summed key by key."""
    total: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            total[key] = total.get(key, 0) + value
    return total


def side_by_side(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Dicts of disjoint keys (buckets, tables: each in one shard) as one."""
    return {key: value for document in documents for key, value in document.items()}


def combine(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Meta or figures of the parts as one: numbers summed, lists concatenated without repeats, dicts
    side by side, anything else (strategy, endpoint...) the first part's."""
    combined: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            if key not in combined:
                combined[key] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
            elif isinstance(value, int | float) and not isinstance(value, bool) and _is_number(combined[key]):
                combined[key] += value
            elif isinstance(value, list) and isinstance(combined[key], list):
                seen = {json.dumps(item, sort_keys=True, default=str) for item in combined[key]}
                combined[key] += [item for item in value if json.dumps(item, sort_keys=True, default=str) not in seen]
            elif isinstance(value, dict) and isinstance(combined[key], dict):
                combined[key].update(value)
    return combined


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
