"""The one shape every source has (DESIGN section 4), and what sources hand back.

A source module (``etcd.py``, ``clickhouse.py``, ``s3/source.py``) defines one class implementing
``Source`` and registers it in ``backup/sources/__init__.py``. The orchestration around it
(locks, previous snapshot, anomaly guard, the commit) lives in ``backup/jobs.py``, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter
from policies.model import SourceSettings

Progress = Callable[[int], None]  # called with a number of bytes moved; a terminal shows it


@dataclass(frozen=True)
class SnapshotOutcome:
    """What ``Source.snapshot`` returns once every entry has been added to the writer.

    ``census`` holds comparable totals under ``census["totals"]`` (e.g. ``{"keys": 412}``,
    ``{"rows": 10**6, "bytes": ...}``, ``{"objects": 2000, "bytes": ...}``) and optionally
    ``census["changed_fraction"]``: the share of items whose content changed since ``previous``.
    The anomaly guard reads only those. ``figures`` are what ``backup run`` reports beyond the
    repository's own byte counts (revision, partitions exported/reused, objects skipped...).
    """

    fingerprint: dict[str, Any]
    census: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreOptions:
    """Every ``lifeboat restore`` option; each source reads the ones that apply to it and refuses
    the others (``parse_target``), so one command serves every kind."""

    snapshot: str = "latest"
    at: datetime | None = None
    dry_run: bool = False
    yes: bool = False
    # etcd
    to_file: str | None = None
    to_data_dir: str | None = None
    name: str | None = None
    initial_cluster: str | None = None
    initial_advertise_peer_urls: str | None = None
    # ClickHouse
    to_host: str | None = None
    to_port: int | None = None
    to_http_port: int | None = None
    to_database: str | None = None
    tables: tuple[str, ...] = ()
    # S3
    to_endpoint: str | None = None
    to_bucket: str | None = None
    to_prefix: str | None = None
    to_dir: str | None = None
    prefix: str | None = None
    in_place: bool = False
    # credentials of the target when they are not the source's own (drills' scratch servers); not CLI options
    to_user: str | None = None
    to_password: str | None = None
    to_access_key_id: str | None = None
    to_secret_access_key: str | None = None

    def given(self, *names: str) -> list[str]:
        """Which of the named target options were given (for "does not apply" errors)."""
        return [name for name in names if getattr(self, name) not in (None, (), False)]


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did (or, with dry_run, would do)."""

    source: str
    snapshot: str
    target: str
    dry_run: bool
    seconds: float
    bytes: int
    figures: dict[str, Any] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)  # lines describing what is (or would be) done
    next_steps: list[str] = field(default_factory=list)  # what an operator must do afterwards

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "snapshot": self.snapshot,
            "target": self.target,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            **self.figures,
            "plan": self.plan,
            "next_steps": self.next_steps,
        }


class Verdict(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    UNVERIFIED = "unverified"  # could not verify: never to be shown as a match


@dataclass(frozen=True)
class Verification:
    """A restored target compared with the snapshot's fingerprint."""

    verdict: Verdict
    message: str
    differences: list[str] = field(default_factory=list)  # prefixes / tables+partitions / keys that differ
    checked: dict[str, Any] = field(default_factory=dict)  # what was compared (counts), for reports

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.MATCH


class Source(Protocol):
    """One kind of data Lifeboat protects. Instances are cheap; connections are made per call."""

    kind: ClassVar[str]
    name: str

    def snapshot(
        self, writer: SnapshotWriter, previous: SnapshotHeader | None, *, progress: Progress | None = None
    ) -> SnapshotOutcome:
        """Read the source and add its entries to ``writer`` (whose repository holds the chunks).

        ``previous`` is the source's newest snapshot, for incremental reuse of unchanged items.
        Raises SourceError when the source cannot be read; nothing is committed then."""
        ...

    def parse_target(self, options: RestoreOptions) -> Any:
        """The restore target these options name; raises RestoreError for options that do not
        apply to this kind or are missing (saying which ones to use)."""
        ...

    def restore(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: Any,
        *,
        options: RestoreOptions,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Bring ``header``'s data back into ``target``; refuses a non-empty target without
        ``options.yes``; with ``options.dry_run`` only plans. Raises RestoreError / IntegrityError."""
        ...

    def verify(self, header: SnapshotHeader, target: Any, *, repository: Repository | None = None) -> Verification:
        """Fingerprint ``target`` and compare it with the snapshot's; never raises for a mismatch.
        With the ``repository``, a source may compare item by item (the snapshot's entries) and
        name what differs; without it, it compares the fingerprint."""
        ...

    def census(self) -> dict[str, Any]:
        """The live source's census now, in the shape of a snapshot's census: ``totals`` and the
        per-group maps (S3 ``buckets`` of objects and bytes, from a listing; ClickHouse ``tables``
        of rows, from system.parts; etcd ``resources`` / ``prefixes`` / ``namespaces`` of keys,
        keys only), for the drill's drift step. Only reads, never a value or an object's bytes.
        Raises SourceError when the source cannot be read."""
        ...


SourceFactory = Callable[[str, SourceSettings], Source]
