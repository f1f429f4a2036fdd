"""Stores: where repository objects live. One Protocol, one module per kind, a registry by URL scheme.

A store knows nothing of chunks or snapshots: it keeps named byte objects under a prefix, and it is
the boundary where foreign errors (OSError, botocore) become ``StoreError`` subclasses:

* ``ObjectNotFound``: the key does not exist;
* ``TransientStoreError``: worth retrying (throttling, 5xx, a dropped connection); the repository
  retries these with backoff (``backup.repository.retry``), so stores themselves do not;
* ``ObjectLockedError``: a delete refused because the object is under Object Lock retention;
* plain ``StoreError``: permanent (access denied, no such bucket), with what to fix in the message.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from policies.errors import StoreError

COPY_BUFFER = 1024 * 1024
TEMP_PREFIX = ".tmp-"  # LocalStore's files being written; never listed as objects


class ObjectNotFound(StoreError):
    """The object does not exist."""


class TransientStoreError(StoreError):
    """A failure that may pass: retry with backoff."""


class ObjectLockedError(StoreError):
    """The object is under Object Lock retention and cannot be deleted yet."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str  # relative to the store's prefix, '/'-separated
    size: int
    modified: datetime  # timezone-aware UTC


class Store(Protocol):
    """Named byte objects under one prefix. Keys are '/'-separated, relative to the prefix."""

    url: str

    def put(self, key: str, stream: BinaryIO) -> None:
        """Write ``stream`` (read to its end) as ``key``, atomically: readers see all of it or nothing."""
        ...

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A readable stream of ``key``; raises ObjectNotFound."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``offset``, fewer where the object ends first (a pack's
        chunk, see packs.py); raises ObjectNotFound."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists; errors other than "not found" are raised, never answered False."""
        ...

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (and sorts after ``start_after``), in
        ascending key order (UTF-8 bytes, as S3 lists), so that a listing that broke off can go on
        where it stopped."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (every version, where the store keeps versions); a missing key is fine."""
        ...

    def remove_incomplete(self, before: datetime) -> int:
        """Remove what writes started before ``before`` and never finished left behind (a process
        killed mid-put): nothing a reader can see, but it takes space. Returns how many went."""
        ...


def put_bytes(store: Store, key: str, data: bytes) -> None:
    """Write ``data`` as ``key``."""
    store.put(key, io.BytesIO(data))


def get_bytes(store: Store, key: str) -> bytes:
    """The whole content of ``key``; raises ObjectNotFound."""
    with store.open(key) as stream:
        return stream.read()


class LocalStore:
    """A directory. Writes go to a temporary file in the target directory, are fsynced, renamed into
    place and the directory fsynced (and a directory the write created, in its parent), so a crash
    leaves either the old state or the whole new object."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()  # as_uri() needs an absolute path
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        # '..' would escape the root; a '.tmp-' name would be written but never listed.
        if not key or any(part in ("", ".", "..") or part.startswith(TEMP_PREFIX) for part in parts):
            raise StoreError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, stream: BinaryIO) -> None:
        target = self._path(key)
        try:
            _make_dirs(target.parent)
            fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    while block := stream.read(COPY_BUFFER):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                Path(temp_name).replace(target)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(temp_name).unlink()
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with stream:
            yield stream

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        # Walk only what the prefix can match: 'chunks/ab' scans 'chunks' for names starting with 'ab'
        # and descends into those, instead of walking the whole repository and filtering. Siblings
        # are visited in the order of their keys, a directory sorting as its name + '/' (what its
        # keys start with): the walk then gives keys in ascending order, as S3 does.
        directory, _, name_start = prefix.rpartition("/")
        base = self._path(directory) if directory else self.root
        key_base = f"{directory}/" if directory else ""
        pending = _in_key_order(key_base, [entry for entry in _scan(base) if entry.name.startswith(name_start)])
        while pending:
            key, entry = pending.pop()
            if entry.name.startswith(TEMP_PREFIX):
                continue  # a write in progress, or one a crash left behind
            try:
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").encode() > start_after.encode() or start_after.startswith(key + "/"):
                        pending.extend(_in_key_order(f"{key}/", _scan(Path(entry.path))))
                    continue
                if not entry.is_file() or key.encode() <= start_after.encode():
                    continue
                stat = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we listed (a concurrent delete or prune): it is simply gone
            except OSError as exc:
                raise StoreError(f"cannot list {entry.path}: {exc.strerror or exc}") from exc
            yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def remove_incomplete(self, before: datetime) -> int:
        """The ``.tmp-`` files of writes that never reached their rename, last touched before ``before``."""
        removed = 0
        pending = _scan(self.root)
        while pending:
            entry = pending.pop()
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.extend(_scan(Path(entry.path)))
                elif entry.name.startswith(TEMP_PREFIX) and entry.stat().st_mtime < before.timestamp():
                    Path(entry.path).unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
            except OSError as exc:
                raise StoreError(f"cannot remove the unfinished write {entry.path}: {exc.strerror or exc}") from exc
        return removed


def _in_key_order(key_base: str, entries: list[os.DirEntry[str]]) -> list[tuple[str, os.DirEntry[str]]]:
    """(key, entry) of ``entries`` as a stack: the smallest key last, popped first."""

    def sort_key(entry: os.DirEntry[str]) -> bytes:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        return (entry.name + ("/" if is_dir else "")).encode()

    return [(key_base + entry.name, entry) for entry in sorted(entries, key=sort_key, reverse=True)]


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory``, read whole before the caller looks at them; [] when it is gone.

    A listing that silently skips an unreadable directory would look complete and let prune or check
    act on half a repository, so every other error is raised (``os.walk`` would swallow it).
    """
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []  # not created yet, or removed while listing: no objects there
    except OSError as exc:
        raise StoreError(f"cannot list {directory}: {exc.strerror or exc}") from exc


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each new entry fsynced in its parent (a crash
    must not lose a directory with the objects in it); one stat when it exists already."""
    if directory.is_dir():
        return
    _make_dirs(directory.parent)
    with contextlib.suppress(FileExistsError):  # another writer made it meanwhile, and fsyncs it too
        directory.mkdir()
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
