"""The key census of an etcd snapshot or a live member: key counts by prefix, Kubernetes resource
and namespace, and what differs between two of them.

The census of a snapshot is read from the snapshot file itself (``bolt.py``: the newest revision of
every key in the ``key`` bucket says whether it is live): that describes exactly what the snapshot
holds, costs the cluster nothing (counting through the API made etcd read every value again at a
past revision) and cannot race a compaction.

A live member (a restored one, being verified) is counted through its JSON gateway (``read_census``:
``POST /v3/kv/range`` with ``keys_only``, paged by key over one kept-alive connection, so memory
stays at one page of keys whatever the cluster size): an independent reading, compared with the
census taken from the file. etcdctl 3.4 has no ``--count-only``, and its ``-w json`` output of a
whole key space is one document.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backup.sources.etcd.gateway import CENSUS_PAGE, VALUE_PAGE, EtcdGateway
from policies.errors import SourceError

if TYPE_CHECKING:
    from backup.sources.etcd.fingerprint import ValueDigests

MAX_GROUPS = 10_000  # distinct prefixes/resources/namespaces kept per census map; the rest count as OTHER
OTHER = "(other)"
TOP_LEVEL = "(top-level keys)"
REGISTRY = "/registry/"
_REGISTRY_ROOT = REGISTRY.rstrip("/").encode()  # the parent path of a key right under /registry/
# Kubernetes stores a few resources one level deeper: /registry/services/specs/<ns>/<name>.
NESTED_RESOURCES: Mapping[str, frozenset[str]] = {"services": frozenset({"specs", "endpoints"})}


@dataclass
class KeyCensus:
    """Key counts by prefix, accumulated one key at a time (memory bounded by MAX_GROUPS per map).

    * ``prefixes``: every key by its first path segment (``/registry/``, ``/calico/``...);
    * ``resources``: keys under ``/registry/`` by Kubernetes resource (``pods``, ``services/specs``,
      ``apiregistration.k8s.io/apiservices`` for API groups and custom resources);
    * ``namespaces``: those of them that live in a namespace (``/registry/<resource>/<ns>/<name>``).
    """

    keys: int = 0
    prefixes: Groups = field(default_factory=lambda: Groups(operator.add))
    resources: Groups = field(default_factory=lambda: Groups(operator.add))
    namespaces: Groups = field(default_factory=lambda: Groups(operator.add))
    # A key's groups depend only on its parent path (``/registry/pods/ns``), which thousands of keys
    # share: worked out once per parent. Not under /registry/ itself: a key there is a resource of its
    # own. Bounded: a flat key space would make one per key.
    _groups: dict[bytes, tuple[str, str | None, str | None]] = field(default_factory=dict, repr=False)

    def add(self, key: bytes) -> None:
        self.keys += 1
        parent, slash, _name = key.rpartition(b"/")
        groups = self._groups.get(parent) if slash else None
        if groups is None:
            groups = _groups_of(key.decode("utf-8", errors="backslashreplace"))
            if slash and parent != _REGISTRY_ROOT and len(self._groups) < MAX_GROUPS:
                self._groups[parent] = groups
        prefix, resource, namespace = groups
        self.prefixes.add(prefix, 1)
        if resource is not None:
            self.resources.add(resource, 1)
        if namespace is not None:
            self.namespaces.add(namespace, 1)

    def as_dict(self, revision: int) -> dict[str, Any]:
        """The census stored in a manifest: ``totals`` is what the anomaly guard compares."""
        return {
            "revision": revision,
            "totals": {"keys": self.keys},
            "prefixes": self.prefixes.as_dict(),
            "resources": self.resources.as_dict(),
            "namespaces": self.namespaces.as_dict(),
        }


class Groups:
    """Figures by name (key counts, or digests summed), for at most MAX_GROUPS names whatever order
    the names come in: the first MAX_GROUPS names in sorted order keep their own, every other name's
    figures are combined under OTHER. So the same keys read in revision order (a snapshot) and in key
    order (a restored member) give the same groups."""

    def __init__(self, combine: Callable[[int, int], int]) -> None:
        self._combine = combine  # commutative and associative: OTHER's figure is the same in any order
        self._figures: dict[str, int] = {}
        self._other: int | None = None
        self._kept: list[str] = []  # the names kept, sorted, once there are MAX_GROUPS of them

    def add(self, name: str, value: int) -> None:
        figures = self._figures
        if name in figures:
            figures[name] = self._combine(figures[name], value)
        elif len(figures) < MAX_GROUPS:
            figures[name] = value
        else:
            kept = self._kept = self._kept or sorted(figures)
            if name < kept[-1]:  # it comes before the last name kept, which goes to OTHER
                self._add_other(figures.pop(kept.pop()))
                bisect.insort(kept, name)
                figures[name] = value
            else:
                self._add_other(value)

    def _add_other(self, value: int) -> None:
        self._other = value if self._other is None else self._combine(self._other, value)

    def as_dict(self) -> dict[str, int]:
        """Every name kept and OTHER (when any name went there), in sorted order."""
        other = {} if self._other is None else {OTHER: self._other}
        return dict(sorted((self._figures | other).items()))


def _groups_of(key: str) -> tuple[str, str | None, str | None]:
    """(prefix, Kubernetes resource or None, namespace or None) of one key."""
    if not key.startswith(REGISTRY):
        return first_segment(key), None, None
    resource, namespace = kubernetes_resource(key)
    return first_segment(key), resource, namespace


def first_segment(key: str) -> str:
    """``/registry/pods/a/b`` -> ``/registry/``; ``app/x`` -> ``app/``; a key without any further ``/`` ->
    TOP_LEVEL (so that a flat key space does not make one group per key)."""
    lead = "/" if key.startswith("/") else ""
    head, sep, _ = key[len(lead) :].partition("/")
    return f"{lead}{head}/" if sep else TOP_LEVEL


def kubernetes_resource(key: str) -> tuple[str, str | None]:
    """``(resource, namespace or None)`` of a key under ``/registry/``.

    Built-in resources: ``/registry/<resource>/[<namespace>/]<name>``; API groups (always dotted) and
    custom resources: ``/registry/<group>/<resource>/[<namespace>/]<name>``; services and endpoints
    sit one level deeper, under ``/registry/services/{specs,endpoints}/``."""
    parts = key[len(REGISTRY) :].split("/")
    if len(parts) > 2 and (parts[1] in NESTED_RESOURCES.get(parts[0], ()) or "." in parts[0]):
        resource, rest = f"{parts[0]}/{parts[1]}", parts[2:]
    else:
        resource, rest = parts[0], parts[1:]
    namespace = rest[0] if len(rest) >= 2 else None
    return resource, namespace


def census_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """What differs between two censuses (or fingerprints), most telling first:
    ``"/registry/pods/: 412 keys in snapshot, 411 restored"``. Empty when they are equal."""
    found = []
    for group, label in (("resources", _resource_label), ("namespaces", _namespace_label), ("prefixes", str)):
        before, after = expected.get(group) or {}, actual.get(group) or {}
        for name in sorted(set(before) | set(after)):
            if before.get(name, 0) != after.get(name, 0):
                found.append(f"{label(name)}: {before.get(name, 0)} keys in snapshot, {after.get(name, 0)} restored")
    for what in ("keys", "revision"):
        old, new = _figure(expected, what), _figure(actual, what)
        if old != new:
            found.append(f"{what}: {old} in snapshot, {new} restored")
    return found


def _resource_label(name: str) -> str:
    return f"{REGISTRY}{name}/"


def _namespace_label(name: str) -> str:
    return f"namespace {name}"


def _figure(census: Mapping[str, Any], what: str) -> Any:
    return census.get("totals", {}).get(what) if what == "keys" and "totals" in census else census.get(what)


def read_census(gateway: EtcdGateway, revision: int = 0, *, values: ValueDigests | None = None) -> dict[str, Any]:
    """Count every key at ``revision`` (0: the current revision, pinned at the first page so the scan
    is consistent while writes go on); with ``values``, read every key's value and revisions too
    (smaller pages) and add each key's digest to it. Raises SourceError (e.g. the revision was
    compacted)."""
    census = KeyCensus()
    with_values, limit = values is not None, VALUE_PAGE if values is not None else CENSUS_PAGE
    gateway.request_keys(b"\0", revision=revision, limit=limit, values=with_values)
    first = page = gateway.read_keys()
    pinned = revision or first.revision
    while True:
        following = page.more and bool(page.keys)
        if following:  # etcd looks up the next page while this one is counted
            gateway.request_keys(page.keys[-1] + b"\0", revision=pinned, limit=limit, values=with_values)
        for key in page.keys:
            census.add(key)
        if values is not None:
            if len(page.values) != len(page.keys):
                raise SourceError(f"etcd at {gateway.endpoint} sent keys without their values")
            for key, record in zip(page.keys, page.values, strict=True):
                values.add_record(key, *record)
        if not following:
            break
        page = gateway.read_keys()
    if census.keys != first.count:
        raise SourceError(
            f"etcd at {gateway.endpoint} listed {census.keys} keys at revision {pinned} but counted {first.count}"
        )
    return census.as_dict(pinned)
