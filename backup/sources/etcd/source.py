"""The etcd source (DESIGN section 4): verified snapshots, a key census pinned to the snapshot's
revision, restore to a file or to a member data dir, and verification on a scratch etcd. This module
holds the ``EtcdSource`` the registry names; each concern lives beside it: ``etcdctl.py`` (the tool,
the supervised save), ``gateway.py`` (the JSON gateway), ``census.py``, ``snapshot_file.py`` (trailer,
status), ``verify.py``, ``targets.py``, ``restore.py`` and ``bolt.py`` (reading the snapshot file).

Taking the snapshot: ``etcdctl snapshot save`` into a temporary file, not the JSON gateway's
``/v3/maintenance/snapshot`` stream. etcdctl speaks gRPC with the TLS client certificates and the
user/password auth operators already use for etcd, writes atomically (``.part``, fsync, rename) and
is the same tool the file is later restored with; the gateway stream would cost a base64 + JSON
decode of every byte in Python (our own gateway client only ever moves keys). Landing in a file
first is also what lets the whole snapshot be verified before it becomes a snapshot: etcd's sha256
trailer (the last 32 bytes are the sha256 of everything before them) and ``etcdctl snapshot
status`` (hash, revision, total keys, total size = file size - 32). Everything that can happen
while the bytes arrive does (``_store_and_check``): the repository hashes, compresses and stores
them as etcdctl writes them (``SnapshotDownload`` reads the growing ``.part``, which etcdctl only
appends to), and the census and fingerprint are read from the same file meanwhile, by position,
only from bytes already handed to the repository (``ArrivingSnapshot``). etcd's trailer is
checked on the bytes stored, in the sha256 pass the repository makes over them anyway
(``SnapshotDigest``). What needs the whole file starts the moment its last byte is here (the
snapshot's first page says how long it is), while etcdctl still syncs it to disk and the last
chunks are uploaded: ``snapshot status``, and beside it one pass over the file for its size and
crc32, which must be those of the bytes stored (a file written again since then, its size or
modification time moved, is checked again as etcdctl left it). So the checks are about the bytes
stored, even if the file changed after they were read; and etcdctl must still exit well. The
manifest that makes those chunks a snapshot is committed only after all of it passed. A snapshot
failing them is never uploaded as good: its chunks stay unreferenced, invisible to restore, and
prune removes them. The save is supervised (``etcdctl.py``): etcdctl would otherwise wait minutes
on a member that died mid-transfer.
The snapshot's revision is ``max(status revision, finishedCompactRev)``, as etcd computes it on
restore (see bolt.py for why status alone can understate it).

Counting keys: the census of a snapshot is read from the snapshot file itself (bolt.py: the
newest revision of every key in the ``key`` bucket says whether it is live), while it arrives;
``snapshot status`` follows (``verify.check_snapshot_file``). The same pass
digests every live key's value and revisions, and the ``lease`` and ``auth*`` buckets give the
leases, users, roles and auth state (fingerprint.py): all of it is the snapshot's fingerprint.
Verifying a restore reads the restored member through its JSON gateway (``verify.verify_endpoint``),
with the source's credentials: a faithful copy of an auth-enabled cluster holds the same users.
"""

from __future__ import annotations

import contextvars
import shutil
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import structlog

from backup.execute import CommandError
from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter, StoredStream
from backup.sources.base import (
    Progress,
    RestoreOptions,
    RestoreResult,
    SnapshotOutcome,
    Verdict,
    Verification,
)
from backup.sources.etcd.bolt import read_snapshot
from backup.sources.etcd.census import read_census
from backup.sources.etcd.etcdctl import ArrivingSnapshot, Etcdctl, SnapshotDownload
from backup.sources.etcd.gateway import EtcdGateway, ssl_context_for
from backup.sources.etcd.restore import restore_to_data_dir, restore_to_file, snapshot_entry
from backup.sources.etcd.snapshot_file import SNAPSHOT_ENTRY, CorruptSnapshotError, SnapshotDigest
from backup.sources.etcd.targets import (
    TARGET_HELP,
    EtcdDataDirTarget,
    EtcdEndpointTarget,
    EtcdFileTarget,
    parse_restore_target,
)
from backup.sources.etcd.verify import CheckedSnapshot, check_snapshot_file, verify_data_dir, verify_endpoint, verify_file
from policies.errors import RestoreError, SourceError
from policies.model import EtcdSettings, reveal

log = structlog.get_logger(__name__)


def _size_crc(written: tuple[int, int]) -> str:
    return f"{written[0]} bytes, {written[1]:08x}"


def _written(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a file: any write to it moves one of them."""
    status = path.stat()
    return status.st_size, status.st_mtime_ns


@dataclass(frozen=True)
class _Taken:
    """A snapshot file that passed verification, and where it came from."""

    path: Path
    endpoint: str
    server_version: str
    checked: CheckedSnapshot
    trailer: str  # etcd's sha256 of the db (hex), checked on the stored bytes


class EtcdSource:
    """Snapshots one etcd cluster (any healthy member: the leader is not required)."""

    kind: ClassVar[str] = "etcd"

    def __init__(self, name: str, settings: EtcdSettings) -> None:
        self.name = name
        self.settings = settings

    # ---- snapshot --------------------------------------------------------------------------------

    def snapshot(
        self, writer: SnapshotWriter, previous: SnapshotHeader | None, *, progress: Progress | None = None
    ) -> SnapshotOutcome:
        """Save one snapshot db while storing its bytes, then verify and count it; see the module
        docstring for why this way.

        A bbolt file changes in place, page by page, so the chunks of unchanged pages are found in the
        repository and not stored again (fixed 1 MiB chunks); the file's tail, smaller than a chunk, is
        in a pack: ``previous``'s reference to it is handed to the writer, so it is reused too.

        Raises SourceError when no endpoint gives a snapshot that passes verification; nothing is
        committed then."""
        ssl_context = ssl_context_for(self.settings.tls, f"sources.{self.name}")
        if previous:
            writer.remember(ref for entry in writer.repository.entries(previous) for ref in entry.chunks)
        with tempfile.TemporaryDirectory(prefix=f"lifeboat-{self.name}-") as workdir:
            taken, stored = self._take(Path(workdir) / SNAPSHOT_ENTRY, ssl_context, writer, progress)
        census = taken.checked.census
        revision = taken.checked.revision
        meta = {
            "revision": revision,
            "etcd_version": taken.server_version,
            "endpoint": taken.endpoint,
            "status": taken.checked.status.as_dict(),
            "trailer_sha256": taken.trailer,
        }
        writer.add(Entry(SNAPSHOT_ENTRY, stored.size, stored.sha256, stored.chunks, meta))
        keys = census["totals"]["keys"]
        log.info("etcd.snapshot.stored", source=self.name, revision=revision, keys=keys, bytes=stored.size)
        fingerprint = {key: census[key] for key in ("revision", "prefixes", "resources", "namespaces")} | {
            "keys": keys,
            "values": taken.checked.values,
            "leases": taken.checked.leases,
            "auth": taken.checked.auth,
        }
        figures = {"revision": revision, "keys": keys, "endpoint": taken.endpoint}
        return SnapshotOutcome(fingerprint=fingerprint, census=census, meta=meta, figures=figures)

    def _take(
        self, path: Path, ssl_context: ssl.SSLContext | None, writer: SnapshotWriter, progress: Progress | None
    ) -> tuple[_Taken, StoredStream]:
        """Try each endpoint in turn until one gives a snapshot that passes verification; its bytes
        are stored by then, and become a snapshot only when the caller's manifest is committed."""
        etcdctl = self._etcdctl()
        failures = []
        for endpoint in self.settings.endpoints:
            started = time.monotonic()
            try:
                with self._gateway(endpoint, ssl_context) as gateway:
                    version = gateway.version()  # fails fast, and clearly, where etcdctl would wait its dial timeout
                with etcdctl.snapshot_save(endpoint, path) as download:
                    stored, checked, trailer = self._store_and_check(
                        download, path, etcdctl, writer, progress, endpoint=endpoint
                    )
            except (SourceError, CommandError) as exc:
                log.warning("etcd.snapshot.endpoint_failed", source=self.name, endpoint=endpoint, error=str(exc))
                failures.append(f"{endpoint}: {exc}")
                path.unlink(missing_ok=True)
                continue
            seconds = time.monotonic() - started
            log.info(
                "etcd.snapshot.verified",
                source=self.name,
                endpoint=endpoint,
                revision=checked.revision,
                seconds=round(seconds, 3),
            )
            return _Taken(path, endpoint, version, checked, trailer), stored
        raise SourceError(f"no verified snapshot of etcd source '{self.name}' from any endpoint:\n" + "\n".join(failures))

    def _store_and_check(
        self,
        download: SnapshotDownload,
        path: Path,
        etcdctl: Etcdctl,
        writer: SnapshotWriter,
        progress: Progress | None,
        *,
        endpoint: str,
    ) -> tuple[StoredStream, CheckedSnapshot, str]:
        """Store the snapshot's bytes as etcdctl writes them (a helper thread), and check the file as
        soon as every byte is here, while etcdctl still syncs it to disk and the last chunks read are
        still being compressed and stored. Returns what was stored, the checks and etcd's trailer.

        etcd's sha256 trailer is checked on the stored bytes as they pass (``SnapshotDigest``).
        ``snapshot status`` and the census read the file: its size and crc32 must be those of the
        bytes stored, or the checks were not about them. A file written again since the checks began
        (its size or modification time moved by the time etcdctl is done) is checked again as
        etcdctl left it, whatever the first checks said: the verdict is always about that file.
        Returns once storing and the checks are done and etcdctl exited well: no chunk is stored
        after this returns or raises. Raises SourceError / CommandError (the save or a check failed),
        or what storing raised."""
        started = time.monotonic()
        whole = download.whole  # set by the download, or here when storing stops (early or at the end)
        digest = SnapshotDigest()
        with ThreadPoolExecutor(3, thread_name_prefix="etcd-store") as helpers:
            # each with the log context of this run
            pending = helpers.submit(
                contextvars.copy_context().run,
                writer.write_stream,
                cast(BinaryIO, download),
                progress=progress,
                digest=digest,
            )
            pending.add_done_callback(lambda _: whole.set())
            contents = helpers.submit(
                contextvars.copy_context().run,
                read_snapshot,
                cast(BinaryIO, ArrivingSnapshot(download)),
                path,
                holds=download.holds,
            )
            tool = helpers.submit(etcdctl.file_tool)  # which binary checks the file: asked meanwhile
            try:
                whole.wait()
                if pending.done():
                    pending.result()  # storing stopped before every byte was here: what stopped it
                checked_path = download.pin()
                if checked_path is None:  # no second name: check the file etcdctl leaves, once it is done
                    wait([pending])
                    pending.result()
                    checked_path = path
                written = _written(checked_path)
                saved = round(time.monotonic() - started, 3)
                log.info("etcd.snapshot.saved", source=self.name, endpoint=endpoint, seconds=saved)
                checked: CheckedSnapshot | CorruptSnapshotError
                try:
                    checked = check_snapshot_file(etcdctl, checked_path, contents=contents.result, tool=tool.result)
                except CorruptSnapshotError as exc:
                    checked = exc  # the verdict, unless etcdctl writes the file again before it is done
            except BaseException:
                download.abandon()  # the helpers still reading it end now, not when etcdctl would
                raise
            finally:
                wait([pending])
                wait([contents])
            stored = pending.result()  # and etcdctl exited well
        if _written(checked_path) != written:  # written again since the checks began: check it as etcdctl left it
            log.warning("etcd.snapshot.rechecked", source=self.name, endpoint=endpoint, path=str(path))
            checked = check_snapshot_file(etcdctl, path, tool=tool.result)
        if isinstance(checked, CorruptSnapshotError):
            raise checked
        trailer = digest.trailer(path)
        if checked.size_crc32 != (stored.size, download.crc32):
            raise CorruptSnapshotError(
                f"{path} changed after its bytes were stored (size and crc32 {_size_crc(checked.size_crc32)}, "
                f"stored {_size_crc((stored.size, download.crc32))}): the checks did not see the stored snapshot"
            )
        return stored, checked, trailer

    def census(self) -> dict[str, Any]:
        """The cluster's key census now (keys per prefix, Kubernetes resource and namespace, at the
        current revision) through the JSON gateway of the first endpoint that answers: a ``keys_only``
        range, no value read (``census.read_census``). Raises SourceError when no endpoint answers."""
        ssl_context = ssl_context_for(self.settings.tls, f"sources.{self.name}")
        failures = []
        for endpoint in self.settings.endpoints:
            try:
                with self._gateway(endpoint, ssl_context) as gateway:
                    return read_census(gateway)
            except SourceError as exc:
                failures.append(f"{endpoint}: {exc}")
        raise SourceError(f"cannot count the keys of etcd source '{self.name}' at any endpoint:\n" + "\n".join(failures))

    def _etcdctl(self) -> Etcdctl:
        return Etcdctl(
            binary=self.settings.etcdctl,
            timeout=self.settings.timeout.total_seconds(),
            tls=self.settings.tls,
            user=self.settings.user,
            password=reveal(self.settings.password),
        )

    def _gateway(self, endpoint: str, ssl_context: ssl.SSLContext | None) -> EtcdGateway:
        return EtcdGateway(
            endpoint, ssl_context=ssl_context, user=self.settings.user, password=reveal(self.settings.password)
        )

    # ---- restore ---------------------------------------------------------------------------------

    def parse_target(self, options: RestoreOptions) -> EtcdFileTarget | EtcdDataDirTarget:
        """``--to-file PATH`` or ``--to-data-dir DIR`` with the member options; raises RestoreError
        for options of other source kinds, a missing or doubled target, or inconsistent membership."""
        return parse_restore_target(options, source=self.name, etcd_bin=self._etcd_bin())

    def restore(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: Any,
        *,
        options: RestoreOptions,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Write the snapshot db to a file, or ``snapshot restore`` it into a member data dir.

        The db's bytes are proven twice before use: the repository's sha256 of the entry, then etcd's
        own trailer. Raises RestoreError (refused target, restore tool failed) or IntegrityError."""
        entry = snapshot_entry(repository, header)
        started = time.monotonic()
        if isinstance(target, EtcdFileTarget):
            plan, next_steps = restore_to_file(
                repository, header, entry, target, source=self.name, options=options, progress=progress
            )
            where = str(target.path)
        elif isinstance(target, EtcdDataDirTarget):
            plan, next_steps = restore_to_data_dir(
                repository,
                header,
                entry,
                target,
                source=self.name,
                etcdctl=self._etcdctl(),
                options=options,
                progress=progress,
            )
            where = str(target.data_dir)
        else:
            raise RestoreError(f"etcd source '{self.name}' cannot restore into {target!r}; {TARGET_HELP}")
        figures = {"revision": header.fingerprint.get("revision"), "keys": header.fingerprint.get("keys")}
        seconds = time.monotonic() - started
        written = 0 if options.dry_run else entry.size
        return RestoreResult(self.name, header.id, where, options.dry_run, seconds, written, figures, plan, next_steps)

    def _etcd_bin(self) -> str:
        """The etcd server next to the configured etcdctl, else the one on PATH."""
        beside = Path(shutil.which(self.settings.etcdctl) or self.settings.etcdctl).with_name("etcd")
        return str(beside) if beside.is_file() else "etcd"

    # ---- verify ----------------------------------------------------------------------------------

    def verify(self, header: SnapshotHeader, target: Any, *, repository: Repository | None = None) -> Verification:
        """Compare a restored target with the snapshot's fingerprint (revision, key counts per prefix,
        resource and namespace, value digests, leases, users, roles and auth state). Never raises
        for a mismatch or an unreachable target."""
        fingerprint = header.fingerprint
        credentials = {"user": self.settings.user, "password": reveal(self.settings.password)}
        if "revision" not in fingerprint:
            return Verification(Verdict.UNVERIFIED, f"snapshot {header.id} carries no etcd fingerprint to compare with")
        if isinstance(target, EtcdEndpointTarget):
            try:
                context = ssl_context_for(target.tls, "target")
            except SourceError as exc:
                return Verification(Verdict.UNVERIFIED, str(exc))
            return verify_endpoint(fingerprint, target.endpoint, ssl_context=context, **credentials)
        if isinstance(target, EtcdDataDirTarget):
            if len(target.members) > 1:
                return Verification(
                    Verdict.UNVERIFIED,
                    f"{target.data_dir} is one member of a {len(target.members)}-member cluster and cannot start alone; "
                    "verify the cluster's endpoint once every member runs",
                )
            return verify_data_dir(fingerprint, target.data_dir, name=target.name, etcd_bin=target.etcd_bin, **credentials)
        if isinstance(target, EtcdFileTarget):
            return verify_file(fingerprint, target.path, etcdctl=self._etcdctl(), etcd_bin=self._etcd_bin(), **credentials)
        return Verification(Verdict.UNVERIFIED, f"etcd source '{self.name}' cannot verify {target!r}")
