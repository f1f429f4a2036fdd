"""Part snapshots: one shard's share of a sharded backup run (issue 9, the ``kubernetes`` executor).

When one machine cannot move a source's data in time, a run of an S3 source (by bucket) or a
ClickHouse source (by table) is split into N shards that run in parallel, each writing a *part*:
a manifest exactly like a snapshot's, with the shard's entries, fingerprint and census, stored at

    parts/<source>/<run>/<index>of<count>.json.zst

and never under ``snapshots/``: no listing of snapshots (``snapshots list``, ``latest``, retention,
drills, the inventory) ever sees a part. When every shard of the run has its part, ``merge_parts``
(backup/jobs.py) writes ONE snapshot of the source from them, with no data movement (the parts'
chunks are referenced, not copied), and deletes the parts. A shard that runs again (a Job's pod
retried) overwrites its part: the key depends only on the run and the shard.

``prune`` keeps the chunks of every part younger than its grace period (a merge may be pending) and
deletes older parts as abandoned (their run failed, or its merge never came); ``check`` proves the
chunks of the parts exist too. This module is pure: names, keys, shard selection.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from policies.model import MAX_SHARDS

PARTS_PREFIX = "parts/"
RUN_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PART_KEY = re.compile(r"^parts/(?P<source>[^/]+)/(?P<run>[^/]+)/(?P<index>\d+)of(?P<count>\d+)\.json\.zst$")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based: ``2/3`` is the second of three)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: want I/N with 1 <= I <= N <= {MAX_SHARDS}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/3"`` -> Shard(2, 3); raises ValueError for anything else."""
        match = re.fullmatch(r"\s*(\d{1,3})\s*/\s*(\d{1,3})\s*", text)
        if not match:
            raise ValueError(f"'{text}' is not a shard like 2/3 (the second of three)")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def pick(self, names: Iterable[str]) -> list[str]:
        """This shard's share of a *configured* list (an S3 source's buckets): round-robin over the
        sorted names, so N shards of M >= N buckets each get some, and every shard computes the same
        split from the same policy."""
        return sorted(set(names))[self.index - 1 :: self.count]

    def owns(self, name: str) -> bool:
        """Whether ``name`` of a *discovered* list (a ClickHouse ``db.table``) is this shard's: by a
        stable hash of the name alone. Shards discover at slightly different moments; a split that
        depended on the rest of the list could then back up a table twice or never."""
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


@dataclass(frozen=True)
class PartOf:
    """Which sharded run a part belongs to, and which shard of it it is."""

    run: str
    shard: Shard

    def __post_init__(self) -> None:
        if not RUN_TOKEN.match(self.run):
            raise ValueError(f"'{self.run}' is not a run name: letters, digits, '.', '_', '-', at most 64")

    def key(self, source: str) -> str:
        return f"{run_prefix(source, self.run)}{self.shard.index}of{self.shard.count}.json.zst"

    def as_dict(self) -> dict[str, str]:
        return {"run": self.run, "shard": str(self.shard)}


@dataclass(frozen=True)
class StoredPart:
    """A part manifest as a listing shows it."""

    source: str
    part: PartOf
    key: str
    modified: datetime


def run_prefix(source: str, run: str) -> str:
    """Where the parts of one run of ``source`` live."""
    return f"{PARTS_PREFIX}{source}/{run}/"


def parse_part_key(key: str) -> tuple[str, PartOf] | None:
    """(source, part) of a part manifest key; None for any other key."""
    match = _PART_KEY.match(key)
    if not match:
        return None
    try:
        return match["source"], PartOf(match["run"], Shard(int(match["index"]), int(match["count"])))
    except ValueError:
        return None
