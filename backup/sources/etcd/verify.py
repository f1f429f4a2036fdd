"""Checking etcd snapshots: a snapshot file before it is stored as good (``check_snapshot_file``),
and a restored copy (a live member, a member data dir, a snapshot file) against the snapshot's
fingerprint.

A snapshot file passes etcd's sha256 trailer and ``etcdctl snapshot status`` (hash, revision, total
keys, total size = file size - 32), and its key census is read from the file itself (``bolt.py``);
our bbolt reader and etcd's must agree on the newest revision, or the snapshot is refused. The
snapshot's revision is ``max(status revision, finishedCompactRev)``, as etcd computes it on restore
(see bolt.py for why status alone can understate it).

Verifying a restore counts the keys of the restored member through its JSON gateway
(``census.read_census``): an independent reading, compared with the census taken from the file.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup.servers import start_etcd
from backup.sources.base import Verdict, Verification
from backup.sources.etcd.bolt import BoltFormatError, finished_compact_revision, snapshot_keys
from backup.sources.etcd.census import KeyCensus, census_differences, read_census
from backup.sources.etcd.etcdctl import Etcdctl
from backup.sources.etcd.gateway import EtcdGateway
from backup.sources.etcd.snapshot_file import CorruptSnapshotError, SnapshotStatus, verify_trailer
from backup.sources.etcd.targets import EtcdDataDirTarget
from policies.errors import LifeboatError, SourceError

SCRATCH_MEMBER = "lifeboat-verify"


@dataclass(frozen=True)
class CheckedSnapshot:
    """A snapshot file that passed etcd's checks, and its census."""

    status: SnapshotStatus
    revision: int  # the snapshot's real revision, which ``status.revision`` can understate (bolt.py)
    trailer: str  # hex sha256 of the db
    census: dict[str, Any]


def check_snapshot_file(etcdctl: Etcdctl, path: Path) -> CheckedSnapshot:
    """etcd's sha256 trailer, ``snapshot status`` (which also runs bbolt's consistency check) and the
    key census read from the file, side by side (a hashing thread, a child process, this thread).
    Our bbolt reader and etcd's must agree on the newest revision. Raises CorruptSnapshotError /
    SourceError."""
    with ThreadPoolExecutor(2, thread_name_prefix="etcd-check") as helpers:
        pending_status = helpers.submit(etcdctl.snapshot_status, path)
        pending_trailer = helpers.submit(verify_trailer, path)
        try:
            compacted = finished_compact_revision(path)
            newest, keys = snapshot_keys(path)
        except BoltFormatError as exc:
            pending_status.result()  # etcd's own verdict on a damaged file comes first
            raise CorruptSnapshotError(f"{path}: {exc}") from None
        status, trailer = pending_status.result(), pending_trailer.result()
    if newest != status.revision:
        raise CorruptSnapshotError(
            f"{path}: etcd says its newest revision is {status.revision}, its key bucket reads {newest}"
        )
    # etcd's store starts at revision 1: an empty snapshot's key bucket says 0, its member says 1.
    revision = max(status.revision, compacted, 1)
    census = KeyCensus()
    for key in keys:
        census.add(key)
    return CheckedSnapshot(status, revision, trailer, census.as_dict(revision))


def verify_endpoint(
    fingerprint: Mapping[str, Any], endpoint: str, *, ssl_context: ssl.SSLContext | None = None
) -> Verification:
    """Compare the etcd at ``endpoint`` (its current revision and key census) with a snapshot's
    fingerprint: MATCH, MISMATCH with the differing prefixes, or UNVERIFIED when it cannot be read."""
    try:
        with EtcdGateway(endpoint, ssl_context=ssl_context) as gateway:
            actual = read_census(gateway)
    except SourceError as exc:
        return Verification(Verdict.UNVERIFIED, f"could not read the restored etcd: {exc}")
    differences = census_differences(fingerprint, actual)
    checked = {"revision": actual["revision"], "keys": actual["totals"]["keys"], "resources": len(actual["resources"])}
    if differences:
        return Verification(
            Verdict.MISMATCH,
            f"the restored etcd differs from the snapshot in {len(differences)} places",
            differences,
            checked,
        )
    prefixes = _plural(len(actual["prefixes"]), "prefix")
    message = f"revision {actual['revision']} and {actual['totals']['keys']} keys in {prefixes} match"
    return Verification(Verdict.MATCH, message, [], checked)


def verify_data_dir(fingerprint: Mapping[str, Any], data_dir: Path, *, name: str, etcd_bin: str = "etcd") -> Verification:
    """Start a scratch etcd on the restored member data dir (free loopback ports), compare it with the
    fingerprint, stop it. UNVERIFIED when there is no member data or etcd would not start."""
    if not (data_dir / "member" / "snap" / "db").is_file():
        # etcd would start an empty member there: a "mismatch" that says nothing about the snapshot
        return Verification(Verdict.UNVERIFIED, f"{data_dir} holds no etcd member data (no member/snap/db)")
    with tempfile.TemporaryDirectory(prefix="lifeboat-verify-") as logs:
        try:
            etcd = start_etcd(data_dir, etcd_bin=etcd_bin, name=name, log_path=Path(logs) / "etcd.log")
        except SourceError as exc:
            return Verification(Verdict.UNVERIFIED, f"the restored etcd would not start: {exc}")
        try:
            return verify_endpoint(fingerprint, etcd.endpoint)
        finally:
            etcd.stop()


def verify_file(fingerprint: Mapping[str, Any], path: Path, *, etcdctl: Etcdctl, etcd_bin: str) -> Verification:
    """A snapshot file: etcd's checks, then restored with ``etcdctl`` into a scratch member (started
    from ``etcd_bin``) and compared. UNVERIFIED when the file cannot be restored."""
    member = EtcdDataDirTarget(Path(), SCRATCH_MEMBER, f"{SCRATCH_MEMBER}=http://127.0.0.1:2380", "http://127.0.0.1:2380")
    with tempfile.TemporaryDirectory(prefix="lifeboat-verify-") as scratch:
        try:
            verify_trailer(path)
            etcdctl.snapshot_restore(path, Path(scratch) / "data", member)
        except (OSError, LifeboatError) as exc:
            return Verification(Verdict.UNVERIFIED, f"{path} could not be restored for verification: {exc}")
        return verify_data_dir(fingerprint, Path(scratch) / "data", name=SCRATCH_MEMBER, etcd_bin=etcd_bin)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")
