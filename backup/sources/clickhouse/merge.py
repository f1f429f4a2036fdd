"""The ClickHouse shard merge: ONE snapshot's outcome from the parts of a sharded run
(``backup.jobs.merge_parts`` through ``part_merge`` in kind.py; backup/sources/parts.py)."""

from __future__ import annotations

import itertools
from typing import Any

from backup.sources.base import SnapshotOutcome
from backup.sources.clickhouse.catalog import Table, held_back
from backup.sources.clickhouse.consistency import merge_windows
from backup.sources.clickhouse.fingerprint import changed_fraction, fingerprint_document, snapshot_definitions, table_prints
from backup.sources.clickhouse.logical import LISTED_EXPORTS
from backup.sources.clickhouse.sql import HASH_METHOD
from backup.sources.parts import PART_META, Merging, add_up, combine, own_meta, side_by_side


def merge_parts(merging: Merging) -> SnapshotOutcome:
    """Entries part after part (a restore plans from all of them, in any order); table prints side by
    side. Held-back tables are worked out again over ALL tables (a view of one shard may read a queue
    table of another), and the changed share over the base's prints, as source._outcome does."""
    tables = []
    for entry in itertools.chain.from_iterable(merging.streams):
        merging.add(entry)
        if entry.meta.get("type") == "table":
            tables.append(Table.from_meta(entry.meta))
    parts, previous = merging.parts, merging.previous
    prints = {key: table for part in parts for key, table in table_prints(part.fingerprint).items()}
    held = held_back(tables)
    first = parts[0].fingerprint
    recorded = [snapshot_definitions(part.fingerprint) for part in parts]
    fingerprint = fingerprint_document(
        prints.values(),
        server_version=first.get("server_version", ""),
        strategy=first.get("strategy", ""),
        held_back=held,
        definitions=None if None in recorded else [item for found in recorded for item in found or ()],
    )
    census: dict[str, Any] = {
        "totals": add_up(part.census.get("totals", {}) for part in parts),
        "tables": side_by_side(part.census.get("tables", {}) for part in parts),
    }
    if previous is not None and previous.fingerprint.get("method") == HASH_METHOD:
        changed = changed_fraction(table_prints(previous.fingerprint), prints)
        if changed is not None:
            census["changed_fraction"] = round(changed, 4)
    meta = combine([own_meta(part) for part in parts])
    meta["held_back"] = [{"table": ".".join(key), "reason": why} for key, why in sorted(held.items())]
    window = merge_windows(part.meta["consistency"] for part in parts if "consistency" in part.meta)
    if window is not None:  # each part pinned its tables on its own: the whole spans them all
        meta["consistency"] = window
    figures = combine([part.meta[PART_META]["figures"] for part in parts])
    figures["exported"] = sorted(figures.get("exported", []))[:LISTED_EXPORTS]
    return SnapshotOutcome(fingerprint, census, meta, figures)
