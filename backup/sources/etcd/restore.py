"""Restoring an etcd snapshot: the verified snapshot db written to a file, or ``snapshot restore``d
into a member data dir that is swapped in place (an occupied one is moved aside, never deleted), and
what an operator does next for the whole cluster to come back.

The db's bytes are proven twice before use: the repository's sha256 of the entry, then etcd's own
trailer (checked by us for a file, by ``snapshot restore`` for a data dir).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from backup.execute import CommandError
from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Progress, RestoreOptions
from backup.sources.etcd.etcdctl import Etcdctl
from backup.sources.etcd.snapshot_file import SNAPSHOT_ENTRY, CorruptSnapshotError, verify_trailer
from backup.sources.etcd.targets import EtcdDataDirTarget, EtcdFileTarget
from backup.sources.unfinished import MARK_SUFFIX, RestoreMark, cannot_write, remove_leftovers
from policies.errors import IntegrityError, RestoreError, SourceError

log = structlog.get_logger(__name__)


def restore_to_file(
    repository: Repository,
    header: SnapshotHeader,
    entry: Entry,
    target: EtcdFileTarget,
    *,
    source: str,
    options: RestoreOptions,
    progress: Progress | None,
) -> tuple[list[str], list[str]]:
    """Write the snapshot db ``entry`` of etcd source ``source`` to ``target.path``, verified, replacing
    an existing file only with ``options.yes``; nothing with ``options.dry_run``. Returns (plan, next
    steps). Raises RestoreError (refused target) or IntegrityError."""
    path = target.path
    exists = path.exists()
    plan = [
        f"write {SNAPSHOT_ENTRY} ({entry.size} bytes, revision {entry.meta.get('revision')}) to {path}",
        "verify it: the snapshot's sha256, then etcd's own sha256 trailer",
    ]
    if exists:
        plan.append(f"replace the existing {path}" + ("" if options.yes else " (refused without --yes)"))
    mark = RestoreMark(_beside(path, MARK_SUFFIX))
    earlier = mark.earlier()
    if earlier:
        plan.append(f"{earlier}: its part files are removed")
    next_steps = [
        f"check it where it is used: etcdctl snapshot status {path} -w table (revision {entry.meta.get('revision')})",
        f"restore each member from it: etcdctl (3.4) or etcdutl (3.5+) snapshot restore {path} --data-dir DIR "
        "--name NAME --initial-cluster ... --initial-advertise-peer-urls ... (or lifeboat restore --to-data-dir)",
    ]
    if options.dry_run:
        return plan, next_steps
    if path.is_dir():
        raise RestoreError(f"--to-file {path} is a directory; give a file path")
    if exists and not options.yes:
        raise RestoreError(f"{path} exists; add --yes to replace it" + (f"; {earlier}" if earlier else ""))
    if earlier:
        log.warning("etcd.restore.earlier_unfinished", source=source, path=str(path), earlier=earlier)
    _make_parent(path)
    partial = _beside(path, f"lifeboat-{os.getpid()}.part")
    with mark.held(snapshot=header.id, keep_on_failure=False):
        try:
            write_verified_snapshot(repository, header, entry, partial, progress)
            partial.replace(path)
        except OSError as exc:  # a full disk, a read-only mount: the target's, named
            raise cannot_write(path, exc) from exc
        finally:
            partial.unlink(missing_ok=True)
        remove_leftovers(_siblings(path, ".lifeboat-", ".part"))
    log.info("etcd.restore.file", source=source, snapshot=header.id, path=str(path), bytes=entry.size)
    return plan, next_steps


def restore_to_data_dir(
    repository: Repository,
    header: SnapshotHeader,
    entry: Entry,
    target: EtcdDataDirTarget,
    *,
    source: str,
    etcdctl: Etcdctl,
    options: RestoreOptions,
    progress: Progress | None,
) -> tuple[list[str], list[str]]:
    """``snapshot restore`` the snapshot db ``entry`` of etcd source ``source`` with ``etcdctl`` into
    ``target.data_dir`` as its member; an occupied data dir is moved aside, only with ``options.yes``;
    nothing with ``options.dry_run``. Returns (plan, next steps for the cluster). Raises RestoreError
    (refused target, restore tool failed) or IntegrityError."""
    data_dir = target.data_dir
    occupied = _non_empty(data_dir)
    aside = data_dir.with_name(f"{data_dir.name}.lifeboat-old-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    plan = [
        f"write {SNAPSHOT_ENTRY} ({entry.size} bytes, revision {entry.meta.get('revision')}) next to {data_dir}",
        "verify it: the snapshot's sha256, then etcd's own sha256 trailer (snapshot restore checks it)",
        f"snapshot restore it as member {target.name} of {target.initial_cluster} into a fresh directory",
    ]
    if occupied:
        plan.append(
            f"move the current contents of {data_dir} to {aside}" + ("" if options.yes else " (refused without --yes)")
        )
    plan.append(f"put the restored member data in place at {data_dir}")
    mark = RestoreMark(_beside(data_dir, MARK_SUFFIX))
    earlier = mark.earlier()
    if earlier:
        plan.append(f"{earlier}: its work directories are removed")
    next_steps = cluster_next_steps(source, header, target, moved_aside=aside if occupied else None)
    if options.dry_run:
        return plan, next_steps
    if occupied and not options.yes:
        raise RestoreError(
            f"{data_dir} is not empty; add --yes to move its contents aside to {aside.name} and restore in its place"
            + (f"; {earlier}" if earlier else "")
        )
    if earlier:
        log.warning("etcd.restore.earlier_unfinished", source=source, data_dir=str(data_dir), earlier=earlier)
    _make_parent(data_dir)
    moved = aside if occupied else None
    with mark.held(snapshot=header.id, keep_on_failure=False, aside=moved):
        _restore_member(repository, header, entry, target, etcdctl=etcdctl, aside=moved, progress=progress)
        remove_leftovers(_siblings(data_dir, WORK_INFIX, ""))
    log.info("etcd.restore.data_dir", source=source, snapshot=header.id, data_dir=str(data_dir), member=target.name)
    return plan, next_steps


WORK_INFIX = ".lifeboat-restore-"  # .<data dir>.lifeboat-restore-XXXX: where snapshot restore writes


def _restore_member(
    repository: Repository,
    header: SnapshotHeader,
    entry: Entry,
    target: EtcdDataDirTarget,
    *,
    etcdctl: Etcdctl,
    aside: Path | None,
    progress: Progress | None,
) -> None:
    """``snapshot restore`` into a sibling of the data dir (same file system; it refuses an existing
    data dir), then swap it in. Raises RestoreError naming the data dir."""
    data_dir = target.data_dir
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}{WORK_INFIX}", dir=data_dir.parent))
    except OSError as exc:
        raise cannot_write(data_dir, exc) from exc
    try:
        snapshot = work / SNAPSHOT_ENTRY
        # No trailer pass of ours here: snapshot restore checks etcd's sha256 trailer itself.
        try:
            write_snapshot_file(repository, header, entry, snapshot, progress, durable=False)
        except OSError as exc:
            raise RestoreError(f"cannot write {data_dir}: {exc.strerror or exc} (the snapshot db, in {work})") from exc
        try:
            etcdctl.snapshot_restore(snapshot, work / "data", target)
        except (CommandError, SourceError) as exc:
            raise RestoreError(f"snapshot restore into {data_dir} failed: {exc}") from exc
        _swap_in(work / "data", data_dir, aside)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _beside(path: Path, suffix: str) -> Path:
    """``.<name>.<suffix>`` next to ``path``."""
    return path.with_name(f".{path.name}.{suffix}")


def _siblings(path: Path, infix: str, suffix: str) -> Iterator[Path]:
    """What earlier restores of ``path`` left beside it: ``.<name><infix>...<suffix>``."""
    start = f".{path.name}{infix}"
    try:
        found = [
            item
            for item in path.parent.iterdir()
            if item.name.startswith(start) and item.name.endswith(suffix) and not item.name.endswith(MARK_SUFFIX)
        ]
    except OSError as exc:
        raise RestoreError(f"cannot list {path.parent}: {exc.strerror}") from exc
    yield from found


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RestoreError(f"cannot create {path.parent}: {exc.strerror}") from exc


def snapshot_entry(repository: Repository, header: SnapshotHeader) -> Entry:
    for entry in repository.entries(header):
        if entry.name == SNAPSHOT_ENTRY:
            return entry
    raise IntegrityError(f"snapshot {header.id} holds no {SNAPSHOT_ENTRY} entry: it is not an etcd snapshot")


def write_verified_snapshot(
    repository: Repository, header: SnapshotHeader, entry: Entry, path: Path, progress: Progress | None = None
) -> None:
    """Write the snapshot db to ``path`` durably, proving it with the repository's sha256 (while
    writing) and etcd's trailer (after). Raises IntegrityError; the caller removes ``path`` on failure."""
    write_snapshot_file(repository, header, entry, path, progress, durable=True)
    try:
        verify_trailer(path)
    except CorruptSnapshotError as exc:
        raise IntegrityError(f"snapshot {header.id}: {exc}") from None


def write_snapshot_file(
    repository: Repository,
    header: SnapshotHeader,
    entry: Entry,
    path: Path,
    progress: Progress | None = None,
    *,
    durable: bool,
) -> None:
    """Write the snapshot db to ``path``; the repository proves its size and sha256 on the way.
    ``durable`` fsyncs it (not worth it for a file consumed at once). Raises IntegrityError."""
    with _ProgressFile(path, progress) as out:
        repository.restore_entry(entry, out, snapshot=header.id)
        if durable:
            os.fsync(out.fileno())


class _ProgressFile(io.FileIO):
    """A file opened for writing that reports every write to ``progress``."""

    def __init__(self, path: Path, progress: Callable[[int], None] | None) -> None:
        super().__init__(path, "wb")
        self._progress = progress

    def write(self, data: Any) -> int:
        """Write all of ``data``: a raw file may take less at once (a disk filling up), then the rest
        fails with the reason (ENOSPC) instead of leaving a short file behind."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = super().write(view[done:]) or 0
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written
            if self._progress and written:
                self._progress(written)
        return done


def _non_empty(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        raise RestoreError(f"--to-data-dir {path} is not a directory")
    return any(path.iterdir())


def _swap_in(restored: Path, data_dir: Path, aside: Path | None) -> None:
    """Put ``restored`` at ``data_dir``; an occupied one is moved to ``aside`` first (never deleted).

    Raises RestoreError saying where the old data is if a rename fails half way."""
    try:
        if aside is not None:
            data_dir.rename(aside)
        elif data_dir.exists():
            data_dir.rmdir()  # empty: checked before
    except OSError as exc:
        raise RestoreError(f"cannot clear {data_dir} for the restored member: {exc.strerror}; nothing was changed") from exc
    try:
        restored.rename(data_dir)
    except OSError as exc:
        where = f"; its previous contents are in {aside}" if aside else ""
        raise RestoreError(f"cannot move the restored member into {data_dir}: {exc.strerror}{where}") from exc


def cluster_next_steps(
    source: str, header: SnapshotHeader, target: EtcdDataDirTarget, *, moved_aside: Path | None
) -> list[str]:
    """What an operator does after restoring one member's data dir, for the whole cluster to come back."""
    members = target.members
    others = [name for name in members if name != target.name]
    revision = header.fingerprint.get("revision")
    steps = [
        f"stop the kube-apiservers, then etcd on every member ({', '.join(members)}), before any starts from restored data",
        "on every member, move its old data dir aside (e.g. mv /var/lib/etcd /var/lib/etcd.old): a member that keeps "
        "its old data brings the old state back"
        + (f"; for {target.name} Lifeboat moved it to {moved_aside}" if moved_aside else ""),
    ]
    steps += [
        f"restore member {name} from the same snapshot on its host: lifeboat restore {source} --snapshot {header.id} "
        f"--to-data-dir <its data dir> --name {name} --initial-cluster {target.initial_cluster} "
        f"--initial-advertise-peer-urls {','.join(members[name])}"
        for name in others
    ]
    steps += [
        f"start every member with its own --name and --initial-advertise-peer-urls, --initial-cluster "
        f"{target.initial_cluster} --initial-cluster-state new (member {target.name}: --data-dir {target.data_dir})",
        f"check: etcdctl endpoint status --cluster -w table shows every member at revision {revision}; then start "
        "the kube-apiservers",
    ]
    return steps
