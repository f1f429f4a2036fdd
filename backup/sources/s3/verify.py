"""Verification of a restored target against a snapshot: by its entries, key by key (when the
repository is at hand), or by its fingerprint, bucket by bucket (when it is not)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Verdict, Verification
from backup.sources.s3.calls import run_bounded
from backup.sources.s3.digest import BucketSum, metadata_view
from backup.sources.s3.targets import Observed, TargetSide, View

MAX_DIFFERENCES = 200  # verify lists this many differences, then says how many more there are


def verify_entries(
    repository: Repository, header: SnapshotHeader, side: TargetSide, view: View, *, share: float, parallel: int
) -> Verification:
    """``side`` against the snapshot's entries that ``view`` selects: missing, extra and differing keys
    by name (size for all; SHA-256, read back on ``parallel`` threads, and metadata for a ``share``)."""
    expected = _expected(repository, header, view)
    total = len(expected)
    differences: list[str] = []
    chosen: list[tuple[str, Expected]] = []
    sampler = random.Random()
    for relative, size in side.scan():
        wanted = expected.pop(relative, None)
        if wanted is None:
            differences.append(f"extra: {relative}")
        elif size != wanted.size:
            differences.append(f"differs: {relative}: {size} bytes, the snapshot has {wanted.size}")
        elif share >= 1 or sampler.random() < share:
            chosen.append((relative, wanted))
    differences += [f"missing: {relative}" for relative in expected]
    untagged = sum(wanted.tags is None for _, wanted in chosen)
    run_bounded(parallel, chosen, lambda item: _compare(side, *item), differences.extend)
    checked = {
        "mode": "entries",
        "objects_expected": total,
        "objects_found": total - len(expected),
        "objects_read": len(chosen),
        "share_read": share,
        "metadata_compared": side.has_metadata,
        # An entry written before tags were kept (or at an endpoint without tagging) holds none to compare.
        "tags_compared": side.has_metadata and untagged == 0,
        "objects_without_tags": untagged,
        "storage_class_compared": side.keeps_storage_class and all(w.storage_class for _, w in chosen),
    }
    return _verification(header, side, sorted(differences), checked)


def verify_fingerprint(header: SnapshotHeader, side: TargetSide, view: View, *, parallel: int) -> Verification:
    """``side`` against the snapshot's fingerprint: per bucket count, bytes and digests of every object
    read back on ``parallel`` threads; UNVERIFIED for a target holding only some keys (--prefix)."""
    if view.select:
        return Verification(
            Verdict.UNVERIFIED,
            f"{side.describe()} holds only keys under '{view.select}': verify it against the snapshot's entries "
            "(verify(..., repository=...)), the fingerprint covers whole buckets",
        )
    sums: dict[str, BucketSum] = {}
    vanished: list[str] = []
    wanted = header.fingerprint.get("buckets", {})
    if view.only_bucket is not None:
        wanted = {view.only_bucket: wanted.get(view.only_bucket, {})}
    # Digests a snapshot taken before tags and storage classes were kept does not hold: not compared.
    tags = side.has_metadata and bool(wanted) and all("tags_digest" in found for found in wanted.values())
    classes = side.keeps_storage_class and bool(wanted) and all("storage_class_digest" in f for f in wanted.values())

    def read(relative: str) -> tuple[str, Observed | None]:
        return relative, side.read(relative, tags=tags)

    def add(item: tuple[str, Observed | None]) -> None:
        relative, seen = item
        if seen is None:
            vanished.append(f"missing: {relative} (vanished while verifying)")
            return
        bucket, key = view.origin(relative)
        total = sums.setdefault(bucket, BucketSum())
        total.add(key, seen.size, seen.sha256, seen.metadata, tags=seen.tags, storage_class=seen.storage_class)

    run_bounded(parallel, (relative for relative, _ in side.scan()), read, add)
    fields: tuple[str, ...] = ("objects", "bytes", "content_digest")
    fields += ("metadata_digest",) * side.has_metadata + ("tags_digest",) * tags + ("storage_class_digest",) * classes
    differences = vanished + _fingerprint_differences(wanted, sums, fields)
    checked = {
        "mode": "fingerprint",
        "objects_found": sum(s.objects for s in sums.values()),
        "objects_read": sum(s.objects for s in sums.values()),
        "share_read": 1.0,
        "metadata_compared": side.has_metadata,
        "tags_compared": tags,
        "storage_class_compared": classes,
    }
    return _verification(header, side, differences, checked)


@dataclass(frozen=True, slots=True)
class Expected:
    """What verify expects of one object: an entry without its chunk list."""

    size: int
    sha256: str
    metadata: dict[str, Any]
    tags: dict[str, str] | None  # None: the snapshot did not keep them
    storage_class: str | None


def _expected(repository: Repository, header: SnapshotHeader, view: View) -> dict[str, Expected]:
    """The snapshot's objects that ``view`` selects, by relative name. The cost: some 300 bytes per
    object while verifying (a target can be listed in any order, so a merge cannot replace it)."""
    expected: dict[str, Expected] = {}
    for entry in repository.entries(header):
        relative = view.relative(entry)
        if relative is not None:
            meta = entry.meta
            expected[relative] = Expected(
                entry.size, entry.sha256, metadata_view(meta), meta.get("tags"), meta.get("storage_class")
            )
    return expected


def _compare(side: TargetSide, relative: str, wanted: Expected) -> list[str]:
    """Differences between one restored object, read back, and what the snapshot holds."""
    seen = side.read(relative, tags=wanted.tags is not None and side.has_metadata)
    if seen is None:
        return [f"missing: {relative} (vanished while verifying)"]
    if seen.size != wanted.size or seen.sha256 != wanted.sha256:
        return [f"differs: {relative}: content (SHA-256 {seen.sha256[:12]}..., the snapshot has {wanted.sha256[:12]}...)"]
    if seen.metadata is None:
        return []
    names = [*wanted.metadata, *(name for name in seen.metadata if name not in wanted.metadata)]
    differences = [
        f"differs: {relative}: {name} {seen.metadata.get(name)!r}, the snapshot has {wanted.metadata.get(name)!r}"
        for name in names
        if seen.metadata.get(name) != wanted.metadata.get(name)
    ]
    if wanted.tags is not None and seen.tags is not None and seen.tags != wanted.tags:
        differences.append(f"differs: {relative}: tags {_sorted(seen.tags)}, the snapshot has {_sorted(wanted.tags)}")
    if wanted.storage_class and seen.storage_class and seen.storage_class != wanted.storage_class:
        differences.append(
            f"differs: {relative}: storage class {seen.storage_class!r}, the snapshot has {wanted.storage_class!r}"
        )
    return differences


def _sorted(tags: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted(tags.items()))


def _fingerprint_differences(wanted: Mapping[str, Any], sums: Mapping[str, BucketSum], fields: tuple[str, ...]) -> list[str]:
    differences = [
        f"extra: objects of bucket '{bucket}', which the snapshot does not hold" for bucket in sums if bucket not in wanted
    ]
    for bucket, expected in sorted(wanted.items()):
        found = sums.get(bucket, BucketSum()).fingerprint()
        differences += [
            f"differs: bucket '{bucket}': {name} {found[name]}, the snapshot has {expected.get(name)}"
            for name in fields
            if found[name] != expected.get(name)
        ]
    return differences


def _verification(header: SnapshotHeader, side: TargetSide, differences: list[str], checked: dict[str, Any]) -> Verification:
    if differences:
        shown = differences[:MAX_DIFFERENCES]
        if len(differences) > MAX_DIFFERENCES:
            shown.append(f"... and {len(differences) - MAX_DIFFERENCES} more")
        places = "1 place" if len(differences) == 1 else f"{len(differences)} places"
        message = f"{side.describe()} differs from snapshot {header.id} in {places}"
        return Verification(Verdict.MISMATCH, message, shown, checked)
    read = checked["objects_read"]
    what = "content"
    if checked["metadata_compared"]:
        what = "content, metadata and tags" if checked["tags_compared"] else "content and metadata"
        what += ", storage class" if checked["storage_class_compared"] else ""
        if not checked["tags_compared"]:
            what += f" (tags not covered: snapshot {header.id} does not hold them)"
    message = (
        f"{side.describe()} matches snapshot {header.id}: {checked['objects_found']} objects, "
        f"{what} read back for {read} ({checked['share_read']:.0%})"
    )
    return Verification(Verdict.MATCH, message, [], checked)
