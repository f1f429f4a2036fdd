"""etcdctl (and etcdutl on 3.5+) with one source's connection settings, and the supervised
``snapshot save`` whose bytes are read while etcdctl writes them.

``etcdctl snapshot save`` writes atomically (``.part``, fsync, rename); ``SnapshotDownload`` reads
the growing ``.part``, which etcdctl only appends to, so the caller stores the bytes during the save;
``ArrivingSnapshot`` lets a second reader (the census) read by position the bytes already handed
to the first. The save is supervised (``_SaveWatch``): etcdctl would otherwise wait minutes on a
member that died mid-transfer.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from backup.execute import STDERR_TAIL_LINES, CommandError, ManagedProcess, mask_secrets, run, start
from backup.sources.etcd.bolt import META_END, db_size
from backup.sources.etcd.snapshot_file import TRAILER_SIZE, CorruptSnapshotError, SnapshotStatus
from backup.sources.etcd.targets import EtcdDataDirTarget
from policies.errors import SourceError
from policies.model import EtcdTls

DIAL_TIMEOUT = "5s"
QUICK_COMMAND_TIMEOUT = 30.0
SAVE_POLL = 0.02  # seconds between looks at a running snapshot save
LIVENESS_INTERVAL = 1.0  # seconds between connection probes of the member a snapshot comes from
LIVENESS_MISSES = 3  # refused probes in a row before the member counts as gone
STALL_TIMEOUT = 60.0  # seconds without a snapshot byte before the transfer counts as stuck
_VERSION = re.compile(r"etcdctl version:\s*(\d+)\.(\d+)")


def etcdctl_version(output: str) -> tuple[int, int]:
    """``etcdctl version`` output -> (major, minor); raises ValueError when it holds no version."""
    match = _VERSION.search(output)
    if not match:
        raise ValueError(f"no 'etcdctl version: X.Y' in {output[:200]!r}")
    return int(match[1]), int(match[2])


# ---- etcdctl / etcdutl ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Etcdctl:
    """etcdctl (and etcdutl on 3.5+) with one source's connection settings.

    Everything goes in through ``ETCDCTL_*`` variables, not flags: the password stays out of the
    process list, and an operator's own ``ETCDCTL_ENDPOINTS`` (etcdctl refuses a flag that shadows a
    set variable) can neither break the command nor redirect it: every such variable is blanked."""

    binary: str = "etcdctl"
    timeout: float = 300.0
    tls: EtcdTls | None = None
    user: str | None = None
    password: str | None = None

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        env = {name: "" for name in os.environ if name.startswith("ETCDCTL_")}
        env |= {"ETCDCTL_API": "3", "ETCDCTL_DIAL_TIMEOUT": DIAL_TIMEOUT, "ETCDCTL_COMMAND_TIMEOUT": f"{self.timeout:g}s"}
        optional = {
            "ETCDCTL_ENDPOINTS": endpoint,
            "ETCDCTL_CACERT": self.tls and self.tls.ca,
            "ETCDCTL_CERT": self.tls and self.tls.cert,
            "ETCDCTL_KEY": self.tls and self.tls.key,
            "ETCDCTL_USER": self.user,
            "ETCDCTL_PASSWORD": self.password,
        }
        env |= {name: str(value) for name, value in optional.items() if value}
        return env

    def run(self, argv: list[str], *, endpoint: str | None = None, timeout: float | None = None) -> bytes:
        """Run ``argv`` (its first item the binary) with this configuration; stdout. Raises CommandError."""
        completed = run(
            argv,
            timeout=timeout or QUICK_COMMAND_TIMEOUT,
            env=self.env(endpoint),
            secrets=[self.password] if self.password else (),
        )
        return completed.stdout

    @contextlib.contextmanager
    def snapshot_save(self, endpoint: str, path: Path) -> Iterator[SnapshotDownload]:
        """``etcdctl snapshot save`` from ``endpoint`` into ``path``, supervised, and the snapshot's
        bytes as etcdctl writes them (``SnapshotDownload``): the caller stores them meanwhile.

        etcdctl's gRPC client keeps retrying a member that died mid-transfer until its command
        timeout (minutes by default), so the save is watched: it is stopped as soon as the member
        refuses connections, or no byte arrived for STALL_TIMEOUT seconds. Reading raises SourceError
        (stopped) or CommandError (etcdctl failed; secrets masked); leaving the block stops etcdctl."""
        log_path = path.with_name(f"{path.name}.etcdctl.log")
        part = path.with_name(f"{path.name}.part")
        for leftover in (path, part, pinned_name(path)):  # of an attempt that was stopped: never this one's bytes
            leftover.unlink(missing_ok=True)
        try:
            process = start([self.binary, "snapshot", "save", str(path)], log_path=log_path, env=self.env(endpoint))
        except CommandError as exc:
            raise SourceError(str(exc)) from exc
        with process:
            watch = _SaveWatch(endpoint, part, self.timeout)
            with SnapshotDownload(process, watch, self) as download:
                yield download

    def snapshot_status(self, path: Path, *, tool: list[str] | None = None) -> SnapshotStatus:
        """``tool``: ``file_tool()``'s answer, when it was asked beforehand. Raises
        CorruptSnapshotError when etcd cannot read the file as a snapshot."""
        tool = tool or self.file_tool()
        try:
            output = self.run([*tool, "snapshot", "status", "-w", "json", str(path)], timeout=self.timeout)
        except CommandError as exc:
            raise CorruptSnapshotError(f"etcd cannot read {path} as a snapshot: {exc}") from exc
        return SnapshotStatus.parse(output, file_size=path.stat().st_size)

    def snapshot_restore(self, snapshot: Path, data_dir: Path, target: EtcdDataDirTarget) -> None:
        self.run(
            [
                *self.file_tool(),
                *("snapshot", "restore", str(snapshot)),
                *("--data-dir", str(data_dir)),
                *("--name", target.name),
                *("--initial-cluster", target.initial_cluster),
                *("--initial-advertise-peer-urls", target.initial_advertise_peer_urls),
            ],
            timeout=self.timeout,
        )

    def file_tool(self) -> list[str]:
        """The binary for file-level work: etcdctl up to 3.4, etcdutl from 3.5 (which moved
        ``snapshot restore``/``status`` there). Raises SourceError when 3.5+ comes without etcdutl."""
        try:
            version = etcdctl_version(self.run([self.binary, "version"]).decode(errors="replace"))
        except (CommandError, ValueError) as exc:
            raise SourceError(f"cannot tell which etcd release {self.binary} belongs to: {exc}") from exc
        if version < (3, 5):
            return [self.binary]
        beside = Path(shutil.which(self.binary) or self.binary).with_name("etcdutl")
        etcdutl = str(beside) if beside.is_file() else shutil.which("etcdutl")
        if not etcdutl:
            raise SourceError(
                f"etcdctl {version[0]}.{version[1]} moved 'snapshot restore/status' to etcdutl, which is neither next "
                f"to {self.binary} nor on PATH: install etcdutl from the same etcd release"
            )
        return [etcdutl]


@dataclass
class _SaveWatch:
    """Watches one ``snapshot save``: the member's liveness, the download's progress, the deadline."""

    endpoint: str
    part: Path  # where etcdctl downloads to before renaming
    timeout: float
    started: float = field(default_factory=time.monotonic)
    _last_size: int = -1
    _last_change: float = field(default_factory=time.monotonic)
    _next_probe: float = 0.0
    _misses: int = 0

    def poll(self) -> str | None:
        """What went wrong so far, if the save has to be stopped; None while it may go on."""
        now = time.monotonic()
        if now - self.started > self.timeout:
            return f"the snapshot from {self.endpoint} took longer than the source's timeout ({self.timeout:g}s)"
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:  # not created yet, or renamed into place since: never a check-then-stat race
            size = -1
        if size != self._last_size:
            self._last_size, self._last_change = size, now
        elif now - self._last_change > STALL_TIMEOUT:
            return f"no snapshot bytes arrived from {self.endpoint} for {STALL_TIMEOUT:g}s"
        if now >= self._next_probe:
            self._misses = 0 if _accepts_connections(self.endpoint) else self._misses + 1
            self._next_probe = now + LIVENESS_INTERVAL
            if self._misses >= LIVENESS_MISSES:
                return f"etcd at {self.endpoint} stopped accepting connections during the snapshot"
        return None


def pinned_name(path: Path) -> Path:
    """Where ``SnapshotDownload.pin`` links the snapshot file ``path``."""
    return path.with_name(f"{path.name}.checked")


class SnapshotDownload(io.RawIOBase):
    """The snapshot file while etcdctl writes it (``<path>.part``, append only, renamed when done):
    a read gives the bytes written so far, waits for more while the save goes on, and ends once
    etcdctl exited well and every byte was read. The open file stays valid
    across the rename.

    ``whole`` is set as soon as every byte of the snapshot was handed to the reader, which is before
    etcdctl is done: it still syncs the file to disk (0.14 s for 218 MiB here) and renames it. The
    snapshot's first page says how long it is (bolt.db_size, plus etcd's 32-byte trailer), so the
    file can be checked meanwhile (``pin``); whether etcdctl exits well is still to be seen."""

    def __init__(self, process: ManagedProcess, watch: _SaveWatch, etcdctl: Etcdctl) -> None:
        super().__init__()
        self._process = process
        self._watch = watch
        self._etcdctl = etcdctl
        self._file: io.FileIO | None = None
        self._final = watch.part.with_name(watch.part.name.removesuffix(".part"))  # where etcdctl renames it
        self._ended = False  # etcdctl exited well and every byte was read
        self.whole = threading.Event()
        self._size: int | None = None  # the snapshot's size, once its first page was read (None: unknown)
        self._delivered = 0  # bytes handed to the reader so far: ``holds`` lets others read only those
        self.crc32 = 0  # of the bytes handed to the reader so far (snapshot_file.file_crc32 of the file, once whole)
        self._stopped = False  # no more bytes will be delivered (ended, failed or abandoned)
        self._progress = threading.Condition()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (the bytes the file gives, not a copy of them); all when ``size`` < 0."""
        if size < 0:
            return self.readall()
        try:
            data = self._read(size)
        except BaseException:
            self._stop()
            raise
        self.crc32 = zlib.crc32(data, self.crc32)
        got = len(data)
        with self._progress:
            if self._delivered < META_END <= self._delivered + got:
                db = db_size(self.read_at(0, META_END))
                self._size = None if db is None else db + TRAILER_SIZE
            self._delivered += got
            self._stopped = self._stopped or self._ended
            if self._size is not None and self._delivered >= self._size:
                self.whole.set()
            self._progress.notify_all()
        return data

    def holds(self, end: int) -> bool:
        """Whether the snapshot reaches ``end`` bytes: waits until the reader has been handed them
        (so a second reader, ``read_at``, sees only bytes that are being stored) or no more will
        come (the snapshot is whole, or the save ended, failed or was abandoned)."""
        with self._progress:
            self._progress.wait_for(lambda: self._delivered >= end or self._stopped or self.whole.is_set())
            return self._delivered >= end

    def pin(self) -> Path | None:
        """A second name for the file etcdctl writes (a hard link, ``<path>.checked``), which its
        rename of the ``.part`` does not move: the whole file is checked there while etcdctl
        finishes. None when the file system makes no links, or the file is gone (etcdctl failed)."""
        pinned = pinned_name(self._final)
        for candidate in (self._watch.part, self._final):  # renamed in between: the second is it
            try:
                os.link(candidate, pinned)
            except FileNotFoundError:
                continue
            except OSError:  # no hard links on this file system
                return None
            return pinned
        return None

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the bytes delivered so far (check with ``holds``
        first), without moving the reader's position."""
        if self._file is None:
            return b""
        return os.pread(self._file.fileno(), size, offset)

    def _stop(self) -> None:
        with self._progress:
            self._stopped = True
            self._progress.notify_all()

    def _read(self, size: int) -> bytes:
        while True:
            done = not self._process.alive()  # before reading: what was written by then is all there is
            if self._file is None:
                self._file = self._open(done)
            data = (self._file.read(size) or b"") if self._file is not None else b""
            if done and not data:
                if self._process.returncode != 0:
                    tail = mask_secrets(self._process.log_tail(STDERR_TAIL_LINES), [self._etcdctl.password or ""])
                    raise CommandError(Path(self._etcdctl.binary).name, self._process.returncode or -1, tail)
                self._ended = True
                return b""
            problem = None if done else self._watch.poll()  # the deadline and the member, even while bytes flow
            if problem:
                raise SourceError(f"{problem}; the snapshot was abandoned")
            if data:
                return data
            time.sleep(SAVE_POLL)

    def abandon(self) -> None:
        """Stop etcdctl (when the caller gives up): a read then ends with CommandError, and ``holds``
        answers at once."""
        self._stop()
        self._process.stop()

    def _open(self, done: bool) -> io.FileIO | None:
        """The download, once etcdctl has created it; after a successful exit, the renamed file."""
        renamed = done and self._process.returncode == 0
        for candidate in (self._watch.part, self._final) if renamed else (self._watch.part,):
            with contextlib.suppress(FileNotFoundError):
                return io.FileIO(candidate, "r")
        return None

    def close(self) -> None:
        self._stop()
        if self._file is not None:
            self._file.close()
        super().close()


class ArrivingSnapshot:
    """The snapshot of a ``SnapshotDownload`` as a file to seek and read in (``bolt.BoltFile`` with
    ``holds=download.holds``), while it arrives: reads go by position, beside the download's own."""

    def __init__(self, download: SnapshotDownload) -> None:
        self._download = download
        self._at = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise io.UnsupportedOperation("an arriving snapshot has no end yet to seek from")
        self._at = offset
        return offset

    def read(self, size: int) -> bytes:
        data = self._download.read_at(self._at, size)
        self._at += len(data)
        return data


def _accepts_connections(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=LIVENESS_INTERVAL):
            return True
    except OSError:
        return False
