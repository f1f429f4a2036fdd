"""The parts of an etcd fingerprint beyond the census: value digests, leases and auth, and how two of
them differ (each side is computed independently: the snapshot file, the restored member)."""

from __future__ import annotations

from backup.sources.etcd.census import MAX_GROUPS, OTHER
from backup.sources.etcd.fingerprint import (
    ValueDigests,
    auth_differences,
    auth_fingerprint,
    key_digest,
    lease_differences,
    leases_fingerprint,
    value_differences,
)

KEYS = {
    b"/registry/pods/team-01/a": (b"{}", 2, 2, 1, 0),
    b"/registry/pods/team-02/b": (b"{}", 3, 3, 1, 0),
    b"/calico/ipam/x": (b"\x00\x01", 4, 4, 1, 0),
    b"flat": (b"1", 5, 5, 1, 0),
}


def digests(keys: dict[bytes, tuple[bytes, int, int, int, int]]) -> dict:
    values = ValueDigests()
    for key, record in keys.items():
        values.add_record(key, *record)
    return values.as_dict()


def test_the_digest_does_not_depend_on_the_order_keys_are_read_in() -> None:
    assert digests(KEYS) == digests(dict(reversed(list(KEYS.items()))))
    assert digests(KEYS)["parents"].keys() == {
        "/registry/pods/team-01/",
        "/registry/pods/team-02/",
        "/calico/ipam/",
        "(top-level keys)",
    }


def test_every_field_of_a_key_counts() -> None:
    base = key_digest(b"k", b"v", 2, 3, 1, 0)
    changed = [
        key_digest(b"k2", b"v", 2, 3, 1, 0),
        key_digest(b"k", b"w", 2, 3, 1, 0),
        key_digest(b"k", b"v", 1, 3, 1, 0),
        key_digest(b"k", b"v", 2, 4, 1, 0),
        key_digest(b"k", b"v", 2, 3, 2, 0),
        key_digest(b"k", b"v", 2, 3, 1, 7),
        key_digest(b"kv", b"", 2, 3, 1, 0),  # lengths are part of it: no shifting bytes across
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_changed_value_is_named_by_its_parent_path() -> None:
    tampered = KEYS | {b"/registry/pods/team-02/b": (b"{!", 3, 3, 1, 0)}
    assert value_differences(digests(KEYS), digests(tampered)) == [
        "values under /registry/pods/team-02/: a value, revision, version or lease differs from the snapshot"
    ]
    assert value_differences(digests(KEYS), digests(KEYS)) == []


def test_paths_beyond_the_group_limit_are_still_counted() -> None:
    values = ValueDigests()
    for number in range(MAX_GROUPS + 5):
        values.add(f"/many/{number}/k".encode(), number + 1)
    doc = values.as_dict()
    assert len(doc["parents"]) == MAX_GROUPS + 1 and OTHER in doc["parents"]
    assert doc["keys"] == MAX_GROUPS + 5


def test_leases_differ_by_id_and_granted_ttl() -> None:
    before = leases_fingerprint({1: 3600, 2: 60})
    assert lease_differences(before, leases_fingerprint({1: 3600, 2: 60})) == []
    assert lease_differences(before, leases_fingerprint({1: 3600, 2: 60, 3: 10})) == [
        "lease 0000000000000003 (TTL 10s): restored, not in snapshot"
    ]
    assert lease_differences(before, leases_fingerprint({1: 3600, 2: 30})) == [
        "lease 0000000000000002: granted TTL 60s in snapshot, 30s restored"
    ]
    unlisted = {key: value for key, value in before.items() if key != "ttls"}
    assert lease_differences(unlisted, leases_fingerprint({1: 3600})) == [
        "leases: 2 in snapshot, 1 restored (their ids or TTLs differ)"
    ]


def test_auth_differences_name_users_roles_and_state() -> None:
    snapshot = auth_fingerprint(False, {"alice": ["reader"], "bob": []}, {"reader": ["read /registry/ .. /registry0"]})
    assert auth_differences(snapshot, snapshot) == []
    restored = {"enabled": True, "users": {"alice": [], "mallory": []}, "roles": {"reader": []}}
    assert auth_differences(snapshot, restored) == [
        "auth: disabled in snapshot, enabled restored",
        "user alice: roles reader in snapshot, none restored",
        "user bob (roles: none): in snapshot, not restored",
        "user mallory (roles: none): restored, not in snapshot",
        "role reader: permissions read /registry/ .. /registry0 in snapshot, none restored",
    ]
    # A part the member could not give is not compared here (the verifier reports it as unverified).
    assert auth_differences(snapshot, {"enabled": False}) == []
