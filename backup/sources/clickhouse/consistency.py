"""The consistency window of a logical snapshot: when its tables' parts were pinned, how far apart,
and which tables moved (re-pinned partitions, tables without parts read when exported)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backup.sources.clickhouse.catalog import (
    Pin,
)
from backup.sources.clickhouse.sql import display_name


@dataclass
class Window:
    """The snapshot's consistency window: the pin, and every table read at another time than it."""

    pin: Pin
    moved: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> partitions, pinned, why
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for database, name in self.pin.unsettled:
            self.add(display_name(database, name), "", self.pin.until, "its parts changed while all tables were pinned")

    def add(self, table: str, partition: str, at: datetime, why: str) -> None:
        with self._lock:
            record = self.moved.setdefault(table, {"table": table, "partitions": [], "pinned": at, "why": why})
            if partition and partition not in record["partitions"]:
                record["partitions"].append(partition)
            if at >= record["pinned"]:
                record["pinned"], record["why"] = at, why

    def to_json(self) -> dict[str, Any]:
        times = [self.pin.at, self.pin.until, *(record["pinned"] for record in self.moved.values())]
        moved = [
            {**record, "partitions": sorted(record["partitions"]), "pinned": record["pinned"].isoformat()}
            for _, record in sorted(self.moved.items())
        ]
        return window_document(self.pin.at, min(times), max(times), moved)


def window_document(pinned: datetime, earliest: datetime, latest: datetime, moved: list[dict[str, Any]]) -> dict[str, Any]:
    """A manifest's ``consistency`` meta."""
    return {
        "pinned": pinned.isoformat(),
        "earliest": earliest.isoformat(),
        "latest": latest.isoformat(),
        "window_seconds": round((latest - earliest).total_seconds(), 3),
        "moved": moved,
    }


def merge_windows(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The consistency window of a snapshot made of parts (a sharded run), each pinned on its own."""
    documents = list(documents)
    if not documents:
        return None
    earliest = min(datetime.fromisoformat(doc["earliest"]) for doc in documents)
    latest = max(datetime.fromisoformat(doc["latest"]) for doc in documents)
    pinned = min(datetime.fromisoformat(doc["pinned"]) for doc in documents)
    moved = sorted((record for doc in documents for record in doc.get("moved", [])), key=lambda record: record["table"])
    return window_document(pinned, earliest, latest, moved)
