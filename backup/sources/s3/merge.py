"""The S3 shard merge: ONE snapshot's entries, fingerprint and census from the parts of a sharded run
(each shard took some buckets; backup/repository/parts.py), with no data moved."""

from __future__ import annotations

import heapq
from typing import Any

from backup.repository.manifest import Entry
from backup.sources.base import SnapshotOutcome
from backup.sources.parts import PART_META, Merging, add_up, combine, own_meta, side_by_side
from policies.errors import SourceError


def merge_parts(merging: Merging) -> SnapshotOutcome:
    """Entries in (bucket, key) order, as one run lists them: the next run's incremental merge join
    depends on it, and shards interleave buckets. Counts summed, buckets side by side; the changed
    share is the shards' changed objects over the base's (each shard compared with that same base).

    Raises SourceError when an object is in two parts (nothing is committed then)."""
    last: tuple[str, str] | None = None
    for entry in heapq.merge(*merging.streams, key=_bucket_and_key):
        if _bucket_and_key(entry) == last:
            raise SourceError(f"object {entry.name} is in two parts of the run; nothing committed")
        last = _bucket_and_key(entry)
        merging.add(entry)
    parts, previous = merging.parts, merging.previous
    totals = add_up(part.census.get("totals", {}) for part in parts)
    census: dict[str, Any] = {"totals": totals, "buckets": side_by_side(part.census.get("buckets", {}) for part in parts)}
    same_base = previous is not None and all(part.meta[PART_META]["previous"] == previous.id for part in parts)
    if previous is not None and same_base and previous.entry_count and all("changed_fraction" in p.census for p in parts):
        changed = sum(int(part.meta[PART_META]["figures"].get("objects_changed", 0)) for part in parts)
        census["changed_fraction"] = round(changed / previous.entry_count, 4)
    fingerprint = {
        **add_up({key: part.fingerprint.get(key, 0) for key in ("objects", "bytes")} for part in parts),
        "buckets": side_by_side(part.fingerprint.get("buckets", {}) for part in parts),
    }
    meta = combine([own_meta(part) for part in parts])
    meta["buckets"] = sorted(meta.get("buckets", []))
    return SnapshotOutcome(fingerprint, census, meta, combine([part.meta[PART_META]["figures"] for part in parts]))


def _bucket_and_key(entry: Entry) -> tuple[str, str]:
    return str(entry.meta.get("bucket", "")), str(entry.meta.get("key", ""))
