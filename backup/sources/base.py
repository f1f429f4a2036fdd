"""The one shape every source has (DESIGN section 4), and what sources hand back.

A kind is one package, ``backup/sources/<kind>/``: ``source.py`` defines the class implementing
``Source``, ``kind.py`` declares the kind (``SourceKind``: that class, its restore target flags, its
shard merge and prune hook), and one line of ``backup/sources/__init__.py`` registers it. The orchestration around it
(locks, previous snapshot, anomaly guard, the commit) lives in ``backup/jobs.py``, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter
from policies.durations import human_duration
from policies.model import ReferenceFrom, SourceSettings

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
class RestoreFlag:
    """One ``lifeboat restore`` / ``lifeboat verify`` target option a kind declares in its package
    (``kind.py``); the CLI builds its options from every registered kind's flags."""

    name: str  # the RestoreOptions.target key; the flag is --name-with-dashes
    help: str
    type: type = str
    multiple: bool = False
    is_flag: bool = False
    metavar: str | None = None

    @property
    def option(self) -> str:
        return flag_of(self.name)


def flag_of(name: str) -> str:
    """The command-line spelling of target option ``name``: ``to_data_dir`` -> ``--to-data-dir``."""
    return "--" + name.replace("_", "-")


_COMMON = ("snapshot", "at", "dry_run", "yes")


@dataclass(frozen=True)
class RestoreOptions:
    """A restore's options: those every kind shares, and ``target``: the kind-specific target options
    by name (each kind declares its own as ``RestoreFlag``s; drills add the scratch server's
    credentials, which are not CLI options). A source reads its own with ``get`` and refuses the
    rest with ``foreign``."""

    snapshot: str = "latest"
    at: datetime | None = None
    dry_run: bool = False
    yes: bool = False
    target: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **values: Any) -> RestoreOptions:
        """Options from keywords: the shared ones by name, every other one a target option."""
        common = {name: values.pop(name) for name in _COMMON if name in values}
        return cls(**common, target=values)

    def get(self, name: str) -> Any:
        """Target option ``name``, or None when it was not given."""
        return self.target.get(name)

    def given(self, *names: str) -> list[str]:
        """Which of the named target options were given (for "does not apply" errors)."""
        return [name for name in names if self.target.get(name) not in (None, (), False)]

    def foreign(self, mine: Iterable[str]) -> list[str]:
        """The target options given that are not in ``mine`` (another kind's), in the order given."""
        own = set(mine)
        return [name for name in self.given(*self.target) if name not in own]


@dataclass(frozen=True)
class SourceKind:
    """All that the rest of Lifeboat knows of one kind, declared in its package (``<kind>/kind.py``)
    and named by one line of the registry (backup/sources/__init__.py). Code is named, not imported
    ('package.module:attribute'), so that a kind's dependencies load only when it is used."""

    name: str
    source: str  # the Source class
    restore_flags: tuple[RestoreFlag, ...] = ()
    target_credentials: tuple[str, ...] = ()  # target options drills set for scratch servers; never CLI flags
    part_merge: str | None = None  # (Merging) -> SnapshotOutcome, for a kind whose backups can be sharded
    prune_hook: str | None = None  # a PruneHook class, for a kind that keeps data outside chunks and manifests
    doctor: str | None = None  # (name, settings, *, repository) -> list[Finding], for ``lifeboat doctor``
    checks: str | None = None  # a CheckRunner class: the kind's drill checks (``checks:`` of its sources)

    @property
    def target_options(self) -> tuple[str, ...]:
        """Every target option this kind reads: what ``RestoreOptions.foreign`` leaves to it."""
        return tuple(flag.name for flag in self.restore_flags) + self.target_credentials


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


@dataclass(frozen=True)
class Observation:
    """What a check saw: ``value`` (what ``equals``, ``min``, ``max`` and ``same_as_source`` compare:
    a query's single value or whole result, a key or object count, an object's SHA-256),
    ``count`` (rows, keys or objects: ``rows_min``, ``exists``), ``bytes`` (``min_bytes``) and how to
    say it to people (``shown``)."""

    value: Any
    count: int
    shown: str
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "count": self.count, "bytes": self.bytes, "shown": self.shown}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Observation:
        return cls(
            document.get("value"),
            int(document.get("count", 0)),
            str(document.get("shown", "")),
            int(document.get("bytes", 0)),
        )


class CheckRunner(Protocol):
    """A kind's drill checks (``SourceKind.checks``): each reads, never writes. Every method raises
    a LifeboatError (SourceError, RestoreError) when the check cannot run (bad SQL, an unreachable
    server): the check is ERROR, never PASS or FAIL."""

    captures_at_backup: ClassVar[bool]  # same_as_source results are read from the source at backup time

    def on_source(self, source: Source, check: Any) -> Observation:
        """Run ``check`` against the live source (read-only: at backup time)."""
        ...

    def on_copy(self, source: Source, header: SnapshotHeader, target: Any, check: Any) -> Observation:
        """Run ``check`` against a restored copy of ``header`` (``target``: what ``Source.verify`` takes)."""
        ...

    def captured(self, header: SnapshotHeader, repository: Repository, check: Any) -> Observation | None:
        """What the snapshot says the source gave for a ``same_as_source`` check; None when the kind
        captures it at backup time (the manifest's meta ``checks``, written by backup/checks.py)."""
        ...

    def reference_values(self, source: Source, header: SnapshotHeader, target: Any, origin: ReferenceFrom) -> list[str]:
        """The values a drill's ``references`` check takes from a restored copy (``origin`` says how)."""
        ...

    def missing_references(self, source: Source, header: SnapshotHeader, target: Any, values: list[str]) -> list[str]:
        """The ``values`` that name nothing in a restored copy (an object, a key, a table), in order."""
        ...


def consistency_summary(document: Mapping[str, Any], *, limit: int = 5) -> str:
    """A snapshot's consistency window (its meta ``consistency``: when its tables were pinned, which
    moved) in one line for people: ``0.0s (every table pinned at ..)`` or ``4.2s from .. to ..: db.a at
    .. (pinned again: ..)``."""
    seconds = float(document.get("window_seconds", 0))
    moved = document.get("moved", [])
    if not moved:
        return f"{human_duration(seconds)} (every table pinned at {document.get('pinned', '?')})"
    named = "; ".join(f"{record['table']} at {record['pinned']} ({record['why']})" for record in moved[:limit])
    more = f"; and {len(moved) - limit} more" if len(moved) > limit else ""
    return f"{human_duration(seconds)} from {document.get('earliest', '?')} to {document.get('latest', '?')}: {named}{more}"
