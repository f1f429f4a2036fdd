"""check and prune: proving the repository is whole, and letting old snapshots go.

``check`` reads every manifest and its entries stream, and proves every chunk they name exists;
with ``read_data`` it also reads and re-hashes chunks (all of them, or a random share that differs
from run to run). ``prune`` applies each source's retention under an exclusive lock, then deletes
chunks that no manifest references and that are older than the grace period.

Part manifests of sharded runs (parts.py) are not snapshots, but their chunks are someone's: a
merge may still be pending. ``check`` proves their chunks exist like a snapshot's; ``prune``
deletes parts older than the grace period (abandoned: a run lasts at most the executor's active
deadline, and a completed run deletes its parts) and counts the chunks of the others as referenced.

A damaged manifest (unreadable, holding another snapshot than its name says, entries that disagree
with its header) is a ``manifest`` problem for ``check``, naming it. ``prune`` never deletes one
unasked: it applies retention to the readable snapshots and reports the damaged ones, but deletes
no chunk while one is there (nobody knows which chunks it needs: a copy of the file put back would
make it whole again). ``forget_damaged`` (``lifeboat prune --forget-damaged``) is the consent to
delete those manifests; their chunks then go like any other unreferenced chunk.

Some kinds keep data in the store outside chunks and manifests (ClickHouse's server-side native
backups under ``native/``). ``prune`` is given their ``PruneHook``s by kind (the sources registry's
``prune_hooks()``): the repository layer knows no source.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from backup.repository.locks import ThisHost, list_locks, stale_reason
from backup.repository.manifest import ChunkRef, SnapshotHeader, chunk_key
from backup.repository.parts import StoredPart
from backup.repository.repository import DamagedManifest, Repository, SnapshotNotFound
from backup.repository.restore_points import (
    RestorePoint,
    delete_restore_point,
    read_restore_point,
    restore_point_ids,
)
from backup.repository.store import ObjectLockedError
from policies.errors import IntegrityError, LifeboatError, StoreError
from policies.model import Retention
from policies.retention import Decision, SnapshotRef, select

log = structlog.get_logger(__name__)
_NAMED_SNAPSHOTS = 3  # how many snapshots a problem names for a shared chunk


@dataclass(frozen=True)
class Problem:
    kind: str  # missing-chunk | corrupt-chunk | manifest | stale-lock | restore-point
    message: str
    chunk: str | None = None
    snapshot: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    snapshots: int = 0
    parts: int = 0  # part manifests of sharded runs awaiting their merge
    restore_points: int = 0  # restore point manifests read
    chunks_referenced: int = 0
    chunks_stored: int = 0  # chunk objects, and the referenced chunks of the packs there
    packs_stored: int = 0
    chunks_read: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [problem.as_dict() for problem in self.problems],
            "snapshots": self.snapshots,
            "parts": self.parts,
            "restore_points": self.restore_points,
            "chunks_referenced": self.chunks_referenced,
            "chunks_stored": self.chunks_stored,
            "packs_stored": self.packs_stored,
            "chunks_read": self.chunks_read,
            "bytes_read": self.bytes_read,
        }


def check(repository: Repository, *, read_data: float = 0.0, stale_after: float = 1800.0) -> CheckReport:
    """Prove every snapshot is restorable: manifests parse, chunks exist, and (``read_data`` > 0)
    that share of the stored chunks still hashes to its id. Never raises for what it finds.

    A stale lock (``locks.stale_reason``) still in the store is a ``stale-lock`` problem. Run under
    a lock (``lifeboat check`` takes a shared one), taking the lock has removed them already: they
    are logged as ``lock.stale_removed`` and are no problem of the repository any more."""
    report = CheckReport()
    users: dict[str, list[str]] = {}  # chunk id: the first snapshots that need it
    own: set[str] = set()  # the chunks needed as objects of their own
    packed: dict[tuple[str, int], ChunkRef] = {}  # the chunks needed from packs, by place
    for header in _headers(repository, report):
        for ref in _chunk_refs(repository, header, report):
            named = users.setdefault(ref.id, [])
            if len(named) < _NAMED_SNAPSHOTS and header.id not in named:
                named.append(header.id)
            if ref.pack:
                packed.setdefault((ref.pack, ref.offset), ref)
            else:
                own.add(ref.id)
    stored = repository.stored_objects()
    chunks = sorted(key.rsplit("/", 1)[-1] for key in stored if key.startswith("chunks/"))
    present = [ref for ref in packed.values() if ref.key in stored]
    report.chunks_referenced, report.chunks_stored = len(users), len(chunks) + len(present)
    report.packs_stored = len(stored) - len(chunks)
    _report_missing(users, own, packed.values(), stored, report)
    if read_data > 0:
        _read_chunks(repository, [ChunkRef(chunk_id, 0) for chunk_id in chunks] + present, read_data, users, report)
    _check_restore_points(repository, report)
    here = ThisHost.current()
    for lock in list_locks(repository.store):
        if reason := stale_reason(lock, stale_after=stale_after, here=here):
            message = f"stale {lock.describe()}: {reason}; the next lock taker or `lifeboat unlock` removes it"
            report.problems.append(Problem("stale-lock", message))
    log.info("check.finished", ok=report.ok, problems=len(report.problems), snapshots=report.snapshots)
    return report


def _check_restore_points(repository: Repository, report: CheckReport) -> None:
    """Every restore point manifest reads, and every member a complete one names is a snapshot
    still there (``restore-point`` problems name the restore point and the member)."""
    present = set(repository.snapshot_ids())
    for point_id in restore_point_ids(repository):
        try:
            point = read_restore_point(repository, point_id)
        except SnapshotNotFound:
            continue  # forgotten since the listing
        except IntegrityError as exc:
            report.problems.append(Problem("restore-point", str(exc)))
            continue
        report.restore_points += 1
        if point.status != "complete":
            continue
        for member in point.members:
            if member.snapshot not in present:
                message = (
                    f"restore point {point.id} names snapshot {member.snapshot} of {member.source}, which is gone: "
                    "the restore point cannot be restored whole"
                )
                report.problems.append(Problem("restore-point", message, snapshot=member.snapshot))


def _headers(repository: Repository, report: CheckReport) -> Iterator[SnapshotHeader]:
    """Every snapshot's header, then every part's (counted apart, in ``report.parts``)."""
    for snapshot_id in repository.snapshot_ids():
        try:
            header = repository.read_header(snapshot_id)
        except LifeboatError as exc:
            report.problems.append(Problem("manifest", str(exc), snapshot=snapshot_id))
            continue
        report.snapshots += 1
        yield header
    for stored in repository.list_parts():
        try:
            part = repository.read_part(stored)
        except LifeboatError as exc:
            report.problems.append(Problem("manifest", str(exc)))
            continue
        report.parts += 1
        yield part


def _report_missing(
    users: Mapping[str, list[str]],
    own: Iterable[str],
    packed: Iterable[ChunkRef],
    stored: Mapping[str, int],
    report: CheckReport,
) -> None:
    """A ``missing-chunk`` problem per chunk object that is gone, and one per pack (naming how many
    chunks went with it)."""
    for chunk_id in sorted(chunk_id for chunk_id in own if chunk_key(chunk_id) not in stored):
        message = f"chunk {chunk_id} is missing; snapshots that need it: {', '.join(users[chunk_id])}"
        report.problems.append(Problem("missing-chunk", message, chunk=chunk_id, snapshot=users[chunk_id][0]))
    lost_packs: dict[str, list[str]] = {}
    for ref in packed:
        if ref.key not in stored:
            lost_packs.setdefault(ref.pack, []).append(ref.id)
    for pack, chunk_ids in sorted(lost_packs.items()):
        snapshots = sorted({snapshot for chunk_id in chunk_ids for snapshot in users[chunk_id]})
        more = f" and {len(chunk_ids) - 1} more" if len(chunk_ids) > 1 else ""
        message = (
            f"pack {pack} is missing, and with it chunk {chunk_ids[0]}{more}; snapshots that need them: "
            f"{', '.join(snapshots[:_NAMED_SNAPSHOTS])}"
        )
        report.problems.append(Problem("missing-chunk", message, chunk=chunk_ids[0], snapshot=snapshots[0]))


def _chunk_refs(repository: Repository, header: SnapshotHeader, report: CheckReport) -> Iterator[ChunkRef]:
    """The chunks a snapshot needs: its entries stream's, then every entry's."""
    yield from header.entries_chunks
    try:
        for entry in repository.entries(header):
            yield from entry.chunks
    except DamagedManifest as exc:
        report.problems.append(Problem("manifest", str(exc), snapshot=header.id))
    except IntegrityError:
        pass  # the entries stream's own chunks are reported as missing or corrupt by the chunk checks
    except LifeboatError as exc:
        report.problems.append(Problem("manifest", f"entries of {header.id} are unreadable: {exc}", snapshot=header.id))


def _read_chunks(
    repository: Repository, stored: list[ChunkRef], share: float, users: Mapping[str, list[str]], report: CheckReport
) -> None:
    chosen = stored if share >= 1 else random.sample(stored, k=max(1, round(len(stored) * share))) if stored else []
    for ref, result in repository.verify_chunks(chosen):
        report.chunks_read += 1
        if isinstance(result, int):
            report.bytes_read += result
            continue
        snapshots = users.get(ref.id, [])
        who = f"; snapshots that need it: {', '.join(snapshots)}" if snapshots else " (no snapshot uses it)"
        first = snapshots[0] if snapshots else None
        report.problems.append(Problem("corrupt-chunk", f"{result}{who}", chunk=ref.id, snapshot=first))


# ---- prune --------------------------------------------------------------------------------------


@dataclass
class PruneReport:
    dry_run: bool
    forgotten: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    chunks_locked: int = 0  # under Object Lock retention: skipped, deleted by a later prune
    snapshots_locked: list[str] = field(default_factory=list)  # forgotten, manifest under Object Lock: deleted later
    manifests_deleted: list[str] = field(default_factory=list)  # forgotten earlier, deleted now their retention ended
    chunks_in_grace: int = 0  # unreferenced but younger than the grace period
    incomplete_removed: int = 0  # leftovers of writes that never finished (.tmp- files, multipart uploads)
    parts_deleted: list[str] = field(default_factory=list)  # abandoned part manifests of sharded runs
    damaged: list[str] = field(default_factory=list)  # snapshots whose manifest is damaged (forgotten only when asked)
    chunks_kept_because: str | None = None  # why no unreferenced chunk was deleted (a damaged manifest kept)
    native_deleted: list[str] = field(default_factory=list)  # a kind's data outside chunks (ClickHouse BACKUPs) removed
    restore_points_kept: list[str] = field(default_factory=list)
    restore_points_forgotten: list[str] = field(default_factory=list)  # their members left to their sources' rules
    restore_points_damaged: list[str] = field(default_factory=list)  # unreadable manifests: kept, members unprotected
    restore_point_reasons: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, **asdict(self)}


class PruneRefused(LifeboatError):
    """Pruning now could lose data; nothing was deleted."""


class PruneHook(Protocol):
    """What prune asks a source kind that keeps data in the store outside chunks and manifests
    (ClickHouse: server-side native backups, which build on each other)."""

    @property
    def prefix(self) -> str:
        """The store-relative key prefix of that data (``native/``)."""
        ...

    def deletable(self, keys: Iterable[str], kept: list[SnapshotHeader]) -> list[str]:
        """The locations (key prefixes, without the trailing ``/``) among the stored ``keys`` under
        ``prefix`` that no snapshot in ``kept`` (every kept snapshot of the kind) still needs."""
        ...


def prune(
    repository: Repository,
    retention: Mapping[str, Retention | None],
    *,
    grace: timedelta,
    dry_run: bool,
    now: datetime | None = None,
    expected_sources: frozenset[str] = frozenset(),
    stale_after: float = 1800.0,
    hooks: Mapping[str, PruneHook] | None = None,
    forget_damaged: bool = False,
    restore_points: Mapping[str, Retention | None] | None = None,
) -> PruneReport:
    """Forget snapshots that no retention rule keeps, then delete unreferenced chunks past ``grace``.

    Restore points (``restore_points``: their retention by name; None keeps them all, and so does a
    name not configured) are judged first, as restore points: every member snapshot of a kept
    complete one is kept whatever its source's rules say; a forgotten one's manifest is deleted and
    its members are left to their sources' rules. A failed restore point keeps no member.

    ``retention`` maps each configured source to its rules (None: keep everything); sources found in
    the repository but not configured are kept whole. ``expected_sources`` are sources the run
    history says have snapshots: if the listing shows none for one, prune refuses. ``hooks`` (by
    kind) say which of a kind's data outside chunks may go with the forgotten snapshots; without
    one, that data is kept. Damaged manifests are listed in ``damaged``; they are kept, and so is
    every chunk, unless ``forget_damaged``: then they are forgotten too (module docstring).
    """
    now = now or datetime.now(UTC)
    report = PruneReport(dry_run=dry_run)
    hooks = hooks or {}
    points = restore_points or {}
    if dry_run:
        _prune(repository, retention, grace, now, expected_sources, hooks, report, forget_damaged, points)
    else:
        with repository.lock("exclusive", "prune", stale_after=stale_after):
            _prune(repository, retention, grace, now, expected_sources, hooks, report, forget_damaged, points)
    if report.chunks_kept_because:
        log.warning("prune.chunks_kept", reason=report.chunks_kept_because, damaged=report.damaged)
    log.info("prune.finished", dry_run=dry_run, forgotten=len(report.forgotten), chunks_deleted=report.chunks_deleted)
    return report


def _prune(
    repository: Repository,
    retention: Mapping[str, Retention | None],
    grace: timedelta,
    now: datetime,
    expected_sources: frozenset[str],
    hooks: Mapping[str, PruneHook],
    report: PruneReport,
    forget_damaged: bool,
    restore_points: Mapping[str, Retention | None],
) -> None:
    if not report.dry_run:  # snapshots forgotten under Object Lock: their manifests go once it ends
        report.manifests_deleted, report.snapshots_locked = repository.delete_forgotten()
    try:
        listing = repository.scan_snapshots()
    except StoreError as exc:
        raise PruneRefused(f"cannot list snapshots, so nothing was pruned: {exc}") from exc
    headers = listing.headers
    for damaged in listing.damaged:
        _damaged(repository, damaged, forget_damaged, report)
    by_source: dict[str, list[SnapshotHeader]] = {}
    for header in headers:
        by_source.setdefault(header.source, []).append(header)
    if empty := sorted(expected_sources - by_source.keys()):
        raise PruneRefused(f"the run history has snapshots of {', '.join(empty)} but the listing shows none; not pruning")
    # Restore points first: a crash after their manifests went leaves members the next prune releases,
    # never a kept restore point naming a snapshot already forgotten.
    protected = _prune_restore_points(repository, restore_points, now, report)
    survivors: list[SnapshotHeader] = []
    for source, source_headers in sorted(by_source.items()):
        rules = retention.get(source)
        decisions = [_protect(decision, protected) for decision in _decide(source_headers, rules, now)]
        index = {header.id: header for header in source_headers}
        if not any(decision.keep for decision in decisions):
            raise PruneRefused(f"retention would leave source '{source}' with no snapshot; not pruning")
        for decision in decisions:
            report.reasons[decision.snapshot.id] = list(decision.reasons)
            target = report.kept if decision.keep else report.forgotten
            target.append(decision.snapshot.id)
            if decision.keep:
                survivors.append(index[decision.snapshot.id])
            elif not report.dry_run and not repository.forget(index[decision.snapshot.id]):
                report.snapshots_locked.append(decision.snapshot.id)
    for kind, hook in sorted(hooks.items()):
        _delete_outside_chunks(repository, hook, [header for header in survivors if header.kind == kind], report)
    pending = _pending_parts(repository, grace, now, report)
    _collect_garbage(repository, survivors + pending, grace, now, report, forget_damaged)
    if not report.dry_run:  # a write older than the grace period that never finished never will
        report.incomplete_removed = repository.store.remove_incomplete(now - grace)


def _prune_restore_points(
    repository: Repository, retention: Mapping[str, Retention | None], now: datetime, report: PruneReport
) -> dict[str, str]:
    """Apply the restore points' retention (by name); forget what it does not keep (unless a dry
    run). Returns ``{member snapshot id: restore point id}`` for the members of the kept complete ones."""
    by_name: dict[str, list[RestorePoint]] = {}
    for point_id in restore_point_ids(repository):
        try:
            point = read_restore_point(repository, point_id)
        except IntegrityError as exc:
            report.restore_points_damaged.append(point_id)
            report.restore_point_reasons[point_id] = [f"damaged manifest, kept (its members are not protected): {exc}"]
            log.warning("restore_point.damaged", restore_point=point_id, error=str(exc))
            continue
        except SnapshotNotFound:
            continue  # deleted since the listing
        by_name.setdefault(point.name, []).append(point)
    protected: dict[str, str] = {}
    for name, points in sorted(by_name.items()):
        index = {point.id: point for point in points}
        refs = [SnapshotRef(point.id, point.started, suspicious=point.status == "failed") for point in points]
        rules = retention.get(name)
        if rules is None:
            decisions = [Decision(ref, True, ("no retention configured for this restore point",)) for ref in refs]
        else:
            decisions = select(refs, rules, now=now)
        for decision in decisions:
            point = index[decision.snapshot.id]
            report.restore_point_reasons[point.id] = list(decision.reasons)
            if decision.keep:
                report.restore_points_kept.append(point.id)
                if point.status == "complete":
                    protected.update(dict.fromkeys(point.snapshots, point.id))
                continue
            report.restore_points_forgotten.append(point.id)
            if not report.dry_run:
                try:
                    delete_restore_point(repository, point)
                except ObjectLockedError:
                    log.info("restore_point.forgotten_locked", restore_point=point.id)
    return protected


def _protect(decision: Decision, protected: Mapping[str, str]) -> Decision:
    """A snapshot its source's rules would forget is kept while a kept restore point names it."""
    point = protected.get(decision.snapshot.id)
    if decision.keep or point is None:
        return decision
    return Decision(decision.snapshot, True, (*decision.reasons, f"member of restore point {point}, which is kept"))


def _pending_parts(repository: Repository, grace: timedelta, now: datetime, report: PruneReport) -> list[SnapshotHeader]:
    """Delete parts older than ``grace`` (abandoned); return the headers of the others, whose chunks
    a pending merge will reference. An unreadable young part raises: never delete blind."""
    pending: list[SnapshotHeader] = []
    for stored in repository.list_parts():
        if now - stored.modified < grace:
            with contextlib.suppress(SnapshotNotFound):  # merged or discarded since the listing
                pending.append(repository.read_part(stored))
            continue
        report.parts_deleted.append(_part_name(stored))
        if not report.dry_run:
            repository.delete_part(stored)
    return pending


def _part_name(stored: StoredPart) -> str:
    return f"{stored.source} run {stored.part.run} shard {stored.part.shard}"


def _delete_outside_chunks(repository: Repository, hook: PruneHook, kept: list[SnapshotHeader], report: PruneReport) -> None:
    """A kind's data outside chunks (ClickHouse ``BACKUP .. TO S3``) goes with its snapshots, but never
    what a kept snapshot still needs (a kept incremental's bases): the hook decides, over every survivor
    of the kind."""
    for location in hook.deletable((info.key for info in repository.store.list(hook.prefix)), kept):
        report.native_deleted.append(location)
        if report.dry_run:
            continue
        for info in repository.store.list(f"{location}/"):
            try:
                repository.store.delete(info.key)
            except ObjectLockedError:
                report.chunks_locked += 1


def _decide(headers: list[SnapshotHeader], rules: Retention | None, now: datetime) -> list[Decision]:
    refs = [SnapshotRef(h.id, h.started, suspicious=h.status == "suspicious") for h in headers]
    if rules is None:
        return [Decision(ref, True, ("no retention configured for this source",)) for ref in refs]
    return select(refs, rules, now=now)


def _damaged(repository: Repository, damaged: DamagedManifest, forget: bool, report: PruneReport) -> None:
    """Forget a damaged snapshot when asked to; else keep it, and every chunk with it."""
    report.damaged.append(damaged.snapshot)
    if forget:
        report.forgotten.append(damaged.snapshot)
        report.reasons[damaged.snapshot] = [f"damaged manifest, forgotten as asked: {damaged}"]
        if not report.dry_run and not repository.forget_id(damaged.snapshot):
            report.snapshots_locked.append(damaged.snapshot)
        return
    report.kept.append(damaged.snapshot)
    report.reasons[damaged.snapshot] = [f"damaged manifest, kept (prune --forget-damaged removes it): {damaged}"]
    report.chunks_kept_because = (
        f"{len(report.damaged)} damaged manifest(s) ({', '.join(report.damaged)}): which chunks they need is unknown, so "
        "no chunk was deleted; put a good copy back, or remove them with `lifeboat prune --forget-damaged`"
    )


def _collect_garbage(
    repository: Repository,
    survivors: list[SnapshotHeader],
    grace: timedelta,
    now: datetime,
    report: PruneReport,
    forget_damaged: bool,
) -> None:
    referenced: set[str] = set()  # keys of the chunk objects and packs the survivors need
    for header in survivors:
        referenced.update(ref.key for ref in header.entries_chunks)
        try:
            for entry in repository.entries(header):
                referenced.update(ref.key for ref in entry.chunks)
        except IntegrityError as exc:  # its entries cannot be read whole: never delete blind
            if header.id not in report.reasons:  # a part of a sharded run awaiting its merge
                report.chunks_kept_because = f"the entries of part {header.id} are unreadable ({exc}): no chunk was deleted"
                continue
            if header.id in report.kept:
                report.kept.remove(header.id)
            _damaged(repository, DamagedManifest(str(exc), snapshot=header.id), forget_damaged, report)
    if report.chunks_kept_because:
        return
    for info in (info for prefix in ("chunks/", "packs/") for info in repository.store.list(prefix)):
        if info.key in referenced:
            continue
        if now - info.modified < grace:
            report.chunks_in_grace += 1
            continue
        if not report.dry_run:
            try:
                repository.store.delete(info.key)
            except ObjectLockedError:
                report.chunks_locked += 1
                continue
        report.chunks_deleted += 1
        report.bytes_deleted += info.size
