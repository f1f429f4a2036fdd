"""What an etcd fingerprint holds beyond the key census, and how two of them differ: a digest of
every live key's value, leases, and auth (users, roles, whether auth is enabled).

Both sides compute these independently: the snapshot's from its bbolt file at backup time
(``bolt.py``), the restored member's through its JSON gateway at verify time (``gateway.py``).

* **values**: per key, sha256 over (key, value, create_revision, mod_revision, version, lease),
  truncated to 64 bits; the per-key digests are summed modulo 2**64 per group. A sum is
  order-independent (the file is read in revision order, the member in key order) and streams: no
  list of keys is kept. Groups: every key's first path segment (``prefixes``, as in the census) and
  its parent path (``parents``: ``/registry/pods/team-01/``, i.e. resource and namespace for
  Kubernetes keys), bounded like the census (MAX_GROUPS, the rest in OTHER), so a difference names
  where it is.
* **leases**: id -> TTL as granted (not the remaining TTL, which moves), listed up to MAX_LEASES,
  beyond that a count and a digest.
* **auth**: whether it is enabled, users -> their roles, roles -> their permissions. Passwords
  are not covered: etcd never hands out their hashes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backup.sources.etcd.census import MAX_GROUPS, TOP_LEVEL, Groups, first_segment

DIGEST = "sha256-64-sum"  # how ``values`` digests are made; another name cannot be compared
MAX_LEASES = 10_000  # leases listed by id in a fingerprint; more are only counted and digested
MAX_LINES = 10  # differences named per part; the rest are counted
_MASK = (1 << 64) - 1
_LENGTH = struct.Struct(">Q")
_REVISIONS = struct.Struct(">qqqq")
_JOINED = 64 * 1024  # values up to this size are digested from one joined buffer
PERMISSIONS = {0: "read", 1: "write", 2: "readwrite"}


def key_digest(
    key: bytes, value: bytes | memoryview, create_revision: int, mod_revision: int, version: int, lease: int
) -> int:
    """The 64-bit digest of one live key (the first 8 bytes of a sha256 over all it holds)."""
    revisions = _REVISIONS.pack(create_revision, mod_revision, version, lease)
    if len(value) <= _JOINED:  # most values: one buffer, one hash call (a snapshot has one per key)
        hashed = hashlib.sha256(b"".join((_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value, revisions)))
    else:  # large values are hashed where they lie, not copied
        hashed = hashlib.sha256(_LENGTH.pack(len(key)))
        hashed.update(key)
        hashed.update(_LENGTH.pack(len(value)))
        hashed.update(value)
        hashed.update(revisions)
    return int.from_bytes(hashed.digest()[:8], "big")


@dataclass
class ValueDigests:
    """Sums of key digests, per prefix and per parent path, accumulated one key at a time."""

    keys: int = 0
    total: int = 0
    prefixes: Groups = field(default_factory=lambda: Groups(_sum))
    parents: Groups = field(default_factory=lambda: Groups(_sum))
    _labels: dict[bytes, tuple[str, str]] = field(default_factory=dict, repr=False)

    def add(self, key: bytes, digest: int) -> None:
        self.keys += 1
        self.total = (self.total + digest) & _MASK
        parent = key[: key.rfind(b"/") + 1]
        labels = self._labels.get(parent)
        if labels is None:
            text = key.decode("utf-8", errors="backslashreplace")
            labels = (first_segment(text), parent.decode("utf-8", errors="backslashreplace") or TOP_LEVEL)
            if len(self._labels) < MAX_GROUPS:
                self._labels[parent] = labels
        self.prefixes.add(labels[0], digest)
        self.parents.add(labels[1], digest)

    def add_record(
        self, key: bytes, value: bytes, create_revision: int, mod_revision: int, version: int, lease: int
    ) -> None:
        self.add(key, key_digest(key, value, create_revision, mod_revision, version, lease))

    def as_dict(self) -> dict[str, Any]:
        return {
            "algorithm": DIGEST,
            "keys": self.keys,
            "total": f"{self.total:016x}",
            "prefixes": {name: f"{value:016x}" for name, value in self.prefixes.as_dict().items()},
            "parents": {name: f"{value:016x}" for name, value in self.parents.as_dict().items()},
        }


def _sum(total: int, digest: int) -> int:
    return (total + digest) & _MASK


def leases_fingerprint(leases: Mapping[int, int]) -> dict[str, Any]:
    """``{"count", "digest", "ttls": {"<16 hex id>": granted TTL}}`` (``ttls`` only up to MAX_LEASES)."""
    total = 0
    for lease, ttl in leases.items():
        total = (total + int.from_bytes(hashlib.sha256(_REVISIONS.pack(lease, ttl, 0, 0)).digest()[:8], "big")) & _MASK
    doc: dict[str, Any] = {"count": len(leases), "digest": f"{total:016x}"}
    if len(leases) <= MAX_LEASES:
        doc["ttls"] = {f"{lease:016x}": ttl for lease, ttl in sorted(leases.items())}
    return doc


def permission_text(kind: int, key: bytes, range_end: bytes) -> str:
    """One role permission as etcdctl shows it: ``read /registry/ .. /registry0`` (a prefix range)."""
    name = PERMISSIONS.get(kind, f"permission-{kind}")
    text = key.decode("utf-8", errors="backslashreplace")
    if not range_end:
        return f"{name} {text}"
    return f"{name} {text} .. {range_end.decode('utf-8', errors='backslashreplace')}"


def auth_fingerprint(enabled: bool, users: Mapping[str, list[str]], roles: Mapping[str, list[str]]) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "users": {name: sorted(users[name]) for name in sorted(users)},
        "roles": {name: sorted(roles[name]) for name in sorted(roles)},
    }


# ---- differences ------------------------------------------------------------------------------------


def value_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Where the value digests differ, by parent path (then prefix when the parents cannot say)."""
    if expected.get("total") == actual.get("total"):
        return []
    found = _group_lines(expected.get("parents") or {}, actual.get("parents") or {})
    if not found:
        found = _group_lines(expected.get("prefixes") or {}, actual.get("prefixes") or {})
    return found or ["values differ (the per-key digests sum to another total)"]


def _group_lines(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    names = [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    lines = [
        f"values under {name}: a value, revision, version or lease differs from the snapshot"
        if name in before and name in after
        else f"values under {name}: {'no keys restored' if name in before else 'keys restored that the snapshot lacks'}"
        for name in names[:MAX_LINES]
    ]
    if len(names) > MAX_LINES:
        lines.append(f"values differ under {len(names) - MAX_LINES} more paths")
    return lines


def lease_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Leases missing, added, or granted another TTL, by id when both sides list them."""
    if expected.get("digest") == actual.get("digest") and expected.get("count") == actual.get("count"):
        return []
    before, after = expected.get("ttls"), actual.get("ttls")
    if before is None or after is None:
        return [f"leases: {expected.get('count')} in snapshot, {actual.get('count')} restored (their ids or TTLs differ)"]
    lines = []
    for lease in sorted(set(before) | set(after)):
        if lease not in after:
            lines.append(f"lease {lease} (TTL {before[lease]}s): in snapshot, not restored")
        elif lease not in before:
            lines.append(f"lease {lease} (TTL {after[lease]}s): restored, not in snapshot")
        elif before[lease] != after[lease]:
            lines.append(f"lease {lease}: granted TTL {before[lease]}s in snapshot, {after[lease]}s restored")
    return _capped(lines, "leases")


def auth_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Auth state, users (and their roles) and roles (and their permissions) that differ; only the
    parts ``actual`` holds (a part that could not be read is reported as unverified elsewhere)."""
    lines = []
    if "enabled" in actual and bool(expected.get("enabled")) != bool(actual["enabled"]):
        state = {True: "enabled", False: "disabled"}
        lines.append(f"auth: {state[bool(expected.get('enabled'))]} in snapshot, {state[bool(actual['enabled'])]} restored")
    for part, noun, what in (("users", "user", "roles"), ("roles", "role", "permissions")):
        if part not in actual:
            continue
        before, after = expected.get(part) or {}, actual[part]
        for name in sorted(set(before) | set(after)):
            if name not in after:
                lines.append(f"{noun} {name} ({what}: {_listed(before[name])}): in snapshot, not restored")
            elif name not in before:
                lines.append(f"{noun} {name} ({what}: {_listed(after[name])}): restored, not in snapshot")
            elif sorted(before[name]) != sorted(after[name]):
                lines.append(f"{noun} {name}: {what} {_listed(before[name])} in snapshot, {_listed(after[name])} restored")
    return _capped(lines, "auth entries")


def _listed(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _capped(lines: list[str], noun: str) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return [*lines[:MAX_LINES], f"{len(lines) - MAX_LINES} more {noun} differ"]
