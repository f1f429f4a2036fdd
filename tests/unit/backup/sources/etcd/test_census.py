"""The etcd key census: prefixes, Kubernetes resources and namespaces, and how two censuses differ."""

from __future__ import annotations

import random

import pytest

from backup.sources.etcd.census import (
    MAX_GROUPS,
    OTHER,
    TOP_LEVEL,
    KeyCensus,
    census_differences,
    first_segment,
    kubernetes_resource,
)
from backup.sources.etcd.fingerprint import ValueDigests


def census_of(*keys: str | bytes, revision: int = 7) -> dict:
    census = KeyCensus()
    for key in keys:
        census.add(key.encode() if isinstance(key, str) else key)
    return census.as_dict(revision)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/registry/pods/default/nginx-1", ("pods", "default")),
        ("/registry/namespaces/kube-system", ("namespaces", None)),
        ("/registry/clusterroles/system:admin", ("clusterroles", None)),
        ("/registry/services/specs/default/kubernetes", ("services/specs", "default")),
        ("/registry/services/endpoints/kube-system/kube-dns", ("services/endpoints", "kube-system")),
        ("/registry/apiregistration.k8s.io/apiservices/v1.apps", ("apiregistration.k8s.io/apiservices", None)),
        (
            "/registry/monitoring.coreos.com/prometheuses/monitoring/k8s",
            ("monitoring.coreos.com/prometheuses", "monitoring"),
        ),
        ("/registry/configmaps/kube-system/coredns.v2", ("configmaps", "kube-system")),
        ("/registry/ranges/serviceips", ("ranges", None)),
        ("/registry/health", ("health", None)),
    ],
)
def test_kubernetes_keys_are_counted_by_resource_and_namespace(key: str, expected: tuple[str, str | None]) -> None:
    assert kubernetes_resource(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/registry/pods/a/b", "/registry/"),
        ("/calico/ipam/v2/x", "/calico/"),
        ("app/settings", "app/"),
        ("/lonely", TOP_LEVEL),
        ("flat-key-0001", TOP_LEVEL),
    ],
)
def test_other_keys_are_counted_by_their_first_path_segment(key: str, expected: str) -> None:
    assert first_segment(key) == expected


def test_census_of_a_small_cluster() -> None:
    census = census_of(
        "/registry/pods/default/a",
        "/registry/pods/default/b",
        "/registry/pods/team-x/c",
        "/registry/deployments/team-x/web",
        "/registry/namespaces/default",
        "/registry/namespaces/team-x",
        "/calico/ipam/block-1",
        b"/bin\xff\xfe/key",  # not UTF-8: counted, never a crash
        revision=412,
    )
    assert census == {
        "revision": 412,
        "totals": {"keys": 8},
        "prefixes": {"/bin\\xff\\xfe/": 1, "/calico/": 1, "/registry/": 6},
        "resources": {"deployments": 1, "namespaces": 2, "pods": 3},
        "namespaces": {"default": 2, "team-x": 2},
    }


def test_a_flat_key_space_keeps_the_census_bounded() -> None:
    census = KeyCensus()
    for number in range(MAX_GROUPS + 500):
        census.add(f"/app-{number:05}/key".encode())
    prefixes = census.as_dict(1)["prefixes"]
    assert len(prefixes) == MAX_GROUPS + 1  # MAX_GROUPS named prefixes plus OTHER
    assert prefixes[OTHER] == 500 and f"/app-{MAX_GROUPS - 1:05}/" in prefixes  # the first names in order
    assert census.keys == MAX_GROUPS + 500


def test_beyond_the_group_limit_the_census_does_not_depend_on_the_order_keys_come_in() -> None:
    """More namespaces than MAX_GROUPS: which ones keep a line of their own cannot depend on whether
    the keys were read in revision order (a snapshot) or in key order (a restored member)."""
    keys = [f"/registry/pods/team-{number:05}/pod".encode() for number in range(MAX_GROUPS + 300)]
    shuffled = random.Random(22).sample(keys, len(keys))
    assert census_of(*keys) == census_of(*reversed(keys)) == census_of(*shuffled)
    assert census_of(*shuffled)["namespaces"][OTHER] == 300
    digests = {key: number * 7919 for number, key in enumerate(keys)}
    in_order, shuffled_values = ValueDigests(), ValueDigests()
    for key in keys:
        in_order.add(key, digests[key])
    for key in shuffled:
        shuffled_values.add(key, digests[key])
    assert in_order.as_dict() == shuffled_values.as_dict()


def test_the_census_does_not_depend_on_the_order_keys_come_in() -> None:
    """A snapshot's keys are counted in revision order, a restored member's in key order: the same
    keys must give the same census. A key right under /registry/ is a resource of its own (its
    name), not its first neighbour's."""
    keys = ["/registry/health", "/registry/pods/b/p", "/registry/a-thing", "/registry/pods/a/p", "/lonely", "/x"]
    assert census_of(*keys) == census_of(*reversed(keys)) == census_of(*sorted(keys))
    assert census_of(*keys)["resources"] == {"a-thing": 1, "health": 1, "pods": 2}


def test_equal_censuses_have_no_differences() -> None:
    keys = ["/registry/pods/default/a", "/registry/secrets/default/s", "/other/x"]
    assert census_differences(census_of(*keys), census_of(*keys)) == []


def test_a_deleted_pod_is_named_by_prefix_namespace_and_totals() -> None:
    before = census_of("/registry/pods/default/a", "/registry/pods/default/b", "/registry/secrets/default/s", revision=10)
    after = census_of("/registry/pods/default/a", "/registry/secrets/default/s", revision=11)
    assert census_differences(before, after) == [
        "/registry/pods/: 2 keys in snapshot, 1 restored",
        "namespace default: 3 keys in snapshot, 2 restored",
        "/registry/: 3 keys in snapshot, 2 restored",
        "keys: 3 in snapshot, 2 restored",
        "revision: 10 in snapshot, 11 restored",
    ]


def test_a_fingerprint_compares_with_a_census() -> None:
    """The manifest's fingerprint keeps ``keys`` at the top level, a census under ``totals``."""
    census = census_of("/registry/pods/default/a", revision=5)
    fingerprint = {key: census[key] for key in ("revision", "prefixes", "resources", "namespaces")} | {"keys": 1}
    assert census_differences(fingerprint, census) == []
    assert census_differences(fingerprint, census_of("/registry/pods/default/a", "/x/y", revision=5)) == [
        "/x/: 0 keys in snapshot, 1 restored",
        "keys: 1 in snapshot, 2 restored",
    ]


def test_a_resource_missing_entirely_after_restore_is_named() -> None:
    before = census_of("/registry/pods/default/a", "/registry/leases/kube-system/l")
    after = census_of("/registry/pods/default/a")
    assert "/registry/leases/: 1 keys in snapshot, 0 restored" in census_differences(before, after)
