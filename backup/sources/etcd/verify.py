"""Checking etcd snapshots: a snapshot file before it is stored as good (``check_snapshot_file``),
and a restored copy (a live member, a member data dir, a snapshot file) against the snapshot's
fingerprint.

A snapshot file passes etcd's sha256 trailer and ``etcdctl snapshot status`` (hash, revision, total
keys, total size = file size - 32), and its key census is read from the file itself (``bolt.py``);
our bbolt reader and etcd's must agree on the newest revision, or the snapshot is refused. The
snapshot's revision is ``max(status revision, finishedCompactRev)``, as etcd computes it on restore
(see bolt.py for why status alone can understate it).

Verifying a restore reads the restored member through its JSON gateway: its leases first (a lease
counts down from the member's start), then its auth state, users and roles, then every key with its
value (``census.read_census``): an independent reading, compared with the census, value digests,
leases and auth taken from the file (fingerprint.py). A part that cannot be read (users and roles
need root once auth is enabled) is "unverified", never a match. A snapshot taken before values,
leases and auth were fingerprinted is compared on what it has, and the message says so.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup.servers import start_etcd
from backup.sources.base import Verdict, Verification
from backup.sources.etcd.bolt import BoltFormatError, SnapshotContents, read_snapshot
from backup.sources.etcd.census import KeyCensus, census_differences, read_census
from backup.sources.etcd.etcdctl import Etcdctl
from backup.sources.etcd.fingerprint import (
    DIGEST,
    ValueDigests,
    auth_differences,
    lease_differences,
    leases_fingerprint,
    permission_text,
    value_differences,
)
from backup.sources.etcd.gateway import EtcdGateway, GatewayUnreachable
from backup.sources.etcd.snapshot_file import CorruptSnapshotError, SnapshotStatus, file_crc32, verify_trailer
from backup.sources.etcd.targets import EtcdDataDirTarget
from policies.errors import LifeboatError, SourceError

SCRATCH_MEMBER = "lifeboat-verify"


@dataclass(frozen=True)
class CheckedSnapshot:
    """A snapshot file that passed etcd's checks, and its census."""

    status: SnapshotStatus
    revision: int  # the snapshot's real revision, which ``status.revision`` can understate (bolt.py)
    size_crc32: tuple[int, int]  # the file's size and crc32: what was checked, to compare with the bytes stored
    census: dict[str, Any]
    values: dict[str, Any]  # fingerprint.ValueDigests.as_dict
    leases: dict[str, Any]  # fingerprint.leases_fingerprint
    auth: dict[str, Any]  # fingerprint.auth_fingerprint


def check_snapshot_file(
    etcdctl: Etcdctl,
    path: Path,
    *,
    contents: Callable[[], SnapshotContents] | None = None,
    tool: Callable[[], list[str]] | None = None,
) -> CheckedSnapshot:
    """``snapshot status`` (which also runs bbolt's consistency check) and the key census read from
    the file, side by side (a child process, this thread), with a pass that takes the file's size and
    crc32 (``CheckedSnapshot.size_crc32``, a thread): compared with the bytes stored, it shows the checks
    were about them. etcd's sha256 trailer is checked on the stored bytes themselves, as they pass
    (``snapshot_file.SnapshotDigest``). ``contents``: the census and fingerprint already read (while
    the file arrived), else they are read here; ``tool``: the file tool (``Etcdctl.file_tool``) asked
    beforehand. Our bbolt reader and etcd's must agree on the newest revision. Raises
    CorruptSnapshotError / SourceError."""
    with ThreadPoolExecutor(2, thread_name_prefix="etcd-check") as helpers:
        pending_size_crc32 = helpers.submit(file_crc32, path)
        pending_status = helpers.submit(etcdctl.snapshot_status, path, tool=tool() if tool else None)
        try:
            read = contents() if contents else _read_file(path)
        except BoltFormatError as exc:
            pending_status.result()  # etcd's own verdict on a damaged file comes first
            raise CorruptSnapshotError(f"{path}: {exc}") from None
        status, size_crc32 = pending_status.result(), pending_size_crc32.result()
    if read.newest != status.revision:
        raise CorruptSnapshotError(
            f"{path}: etcd says its newest revision is {status.revision}, its key bucket reads {read.newest}"
        )
    # etcd's store starts at revision 1: an empty snapshot's key bucket says 0, its member says 1.
    revision = max(status.revision, read.compacted, 1)
    census, values = KeyCensus(), ValueDigests()
    for key, digest in read.keys.items():
        census.add(key)
        values.add(key, digest)
    return CheckedSnapshot(status, revision, size_crc32, census.as_dict(revision), values.as_dict(), read.leases, read.auth)


def _read_file(path: Path) -> SnapshotContents:
    with path.open("rb") as handle:
        return read_snapshot(handle, path)


def verify_endpoint(
    fingerprint: Mapping[str, Any],
    endpoint: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    user: str | None = None,
    password: str | None = None,
) -> Verification:
    """Compare the etcd at ``endpoint`` (its revision, key census, values, leases and auth) with a
    snapshot's fingerprint: MISMATCH naming what differs, UNVERIFIED when it (or a part the
    fingerprint holds) cannot be read and nothing was found to differ, else MATCH."""
    differences: list[str] = []
    unverified: list[str] = []
    checked: dict[str, Any] = {}
    covered = "values" in fingerprint
    try:
        with EtcdGateway(endpoint, ssl_context=ssl_context, user=user, password=password) as gateway:
            if "leases" in fingerprint:  # first: a lease counts down from the member's start
                differences += _compare_leases(gateway, fingerprint["leases"], unverified, checked)
            if "auth" in fingerprint:
                differences += _compare_auth(gateway, fingerprint["auth"], unverified, checked)
            digests = ValueDigests() if covered and fingerprint["values"].get("algorithm") == DIGEST else None
            if covered and digests is None:
                unverified.append(
                    f"values: digested as {fingerprint['values'].get('algorithm')!r}, which this Lifeboat cannot compute"
                )
            try:
                actual = read_census(gateway, values=digests)
            except GatewayUnreachable:
                raise
            except SourceError as exc:
                unverified.append(f"keys and values: {exc}")
                actual = None
    except GatewayUnreachable as exc:
        return Verification(Verdict.UNVERIFIED, f"could not read the restored etcd: {exc}")
    if actual is not None:
        differences[:0] = census_differences(fingerprint, actual)
        checked |= {"revision": actual["revision"], "keys": actual["totals"]["keys"], "resources": len(actual["resources"])}
        if digests is not None:
            differences += value_differences(fingerprint["values"], digests.as_dict())
            checked["values"] = digests.keys
    if differences:
        message = f"the restored etcd differs from the snapshot in {len(differences)} places"
        if unverified:
            message += f" (and could not be checked for: {'; '.join(unverified)})"
        return Verification(Verdict.MISMATCH, message, differences, checked)
    if unverified or actual is None:
        return Verification(Verdict.UNVERIFIED, f"could not verify the restored etcd: {'; '.join(unverified)}", [], checked)
    prefixes = _plural(len(actual["prefixes"]), "prefix")
    message = f"revision {actual['revision']} and {actual['totals']['keys']} keys in {prefixes} match"
    if covered:
        auth = fingerprint.get("auth") or {}
        message += (
            f", with every value; {_plural(checked.get('leases', 0), 'lease')}, "
            f"{_plural(len(auth.get('users', {})), 'user')} and {_plural(len(auth.get('roles', {})), 'role')} match, "
            f"auth {'enabled' if auth.get('enabled') else 'disabled'}"
        )
    else:
        message += "; values, leases and auth were not covered by this snapshot (taken before Lifeboat fingerprinted them)"
    return Verification(Verdict.MATCH, message, [], checked)


def _compare_leases(
    gateway: EtcdGateway, expected: Mapping[str, Any], unverified: list[str], checked: dict[str, Any]
) -> list[str]:
    try:
        actual = leases_fingerprint(gateway.leases())
    except GatewayUnreachable:
        raise
    except SourceError as exc:
        unverified.append(f"leases: {exc}")
        return []
    checked["leases"] = actual["count"]
    return lease_differences(expected, actual)


def _compare_auth(
    gateway: EtcdGateway, expected: Mapping[str, Any], unverified: list[str], checked: dict[str, Any]
) -> list[str]:
    """The member's auth state, users and roles against the snapshot's; what cannot be read is added
    to ``unverified`` (users and roles need root once auth is enabled)."""
    actual: dict[str, Any] = {}
    try:
        actual["enabled"] = gateway.auth_enabled()
    except GatewayUnreachable:
        raise
    except SourceError as exc:
        unverified.append(f"whether auth is enabled: {exc}")
    try:
        actual["users"] = {name: sorted(roles) for name, roles in gateway.users().items()}
    except GatewayUnreachable:
        raise
    except SourceError as exc:
        unverified.append(f"auth users: {exc}")
    try:
        roles = gateway.roles()
        actual["roles"] = {name: sorted(permission_text(*item) for item in items) for name, items in roles.items()}
    except GatewayUnreachable:
        raise
    except SourceError as exc:
        unverified.append(f"auth roles: {exc}")
    checked |= {name: len(actual[name]) for name in ("users", "roles") if name in actual}
    if "enabled" in actual:
        checked["auth_enabled"] = actual["enabled"]
    return auth_differences(expected, actual)


def verify_data_dir(
    fingerprint: Mapping[str, Any],
    data_dir: Path,
    *,
    name: str,
    etcd_bin: str = "etcd",
    user: str | None = None,
    password: str | None = None,
) -> Verification:
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
            return verify_endpoint(fingerprint, etcd.endpoint, user=user, password=password)
        finally:
            etcd.stop()


def verify_file(
    fingerprint: Mapping[str, Any],
    path: Path,
    *,
    etcdctl: Etcdctl,
    etcd_bin: str,
    user: str | None = None,
    password: str | None = None,
) -> Verification:
    """A snapshot file: etcd's checks, then restored with ``etcdctl`` into a scratch member (started
    from ``etcd_bin``) and compared. UNVERIFIED when the file cannot be restored."""
    member = EtcdDataDirTarget(Path(), SCRATCH_MEMBER, f"{SCRATCH_MEMBER}=http://127.0.0.1:2380", "http://127.0.0.1:2380")
    with tempfile.TemporaryDirectory(prefix="lifeboat-verify-") as scratch:
        try:
            verify_trailer(path)
            etcdctl.snapshot_restore(path, Path(scratch) / "data", member)
        except (OSError, LifeboatError) as exc:
            return Verification(Verdict.UNVERIFIED, f"{path} could not be restored for verification: {exc}")
        return verify_data_dir(
            fingerprint, Path(scratch) / "data", name=SCRATCH_MEMBER, etcd_bin=etcd_bin, user=user, password=password
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")
