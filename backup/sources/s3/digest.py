"""What a snapshot says about its buckets: each entry's metadata, order-independent per-bucket
digests (the fingerprint), the census and the figures of a snapshot run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backup.repository.manifest import Entry, SnapshotHeader
from backup.sources.base import SnapshotOutcome
from backup.sources.s3.listing import Listed, PreviousEntries, normalize_etag, normalize_time

READ_BLOCK = 1024 * 1024
# (entry meta field, S3 API parameter / response field) of what a restore recreates.
META_FIELDS = (
    ("content_type", "ContentType"),
    ("content_encoding", "ContentEncoding"),
    ("cache_control", "CacheControl"),
    ("content_disposition", "ContentDisposition"),
    ("content_language", "ContentLanguage"),
)


def metadata_view(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a restore recreates and a verification compares."""
    view: dict[str, Any] = {name: meta.get(name) for name, _ in META_FIELDS}
    view["metadata"] = dict(meta.get("metadata") or {})
    return view


def object_meta(bucket: str, key: str, response: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's meta from the GET (or HEAD) response that describes the bytes read."""
    meta: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "etag": normalize_etag(str(response.get("ETag", ""))),
        "last_modified": normalize_time(response["LastModified"]),
    }
    meta.update({name: response[api] for name, api in META_FIELDS if response.get(api)})
    if response.get("Metadata"):
        meta["metadata"] = dict(response["Metadata"])
    return meta


def _pair_hash(*parts: str) -> int:
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(raw) + raw)
    return int.from_bytes(digest.digest(), "big")


@dataclass
class BucketSum:
    """Count, bytes and order-independent digests of one bucket's objects."""

    objects: int = 0
    bytes: int = 0
    content: int = 0
    metadata: int = 0

    def add(self, key: str, size: int, sha256: str, view: Mapping[str, Any] | None) -> None:
        self.objects += 1
        self.bytes += size
        # Sums of per-object hashes: equal for any listing order, so a restored copy listed (or
        # walked) differently still gives the same digest.
        self.content = (self.content + _pair_hash(key, sha256)) % 2**256
        if view is not None:
            self.metadata = (self.metadata + _pair_hash(key, json.dumps(view, sort_keys=True))) % 2**256

    def fingerprint(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "content_digest": f"{self.content:064x}",
            "metadata_digest": f"{self.metadata:064x}",
        }


@dataclass(frozen=True)
class Skipped:
    """An object that vanished between the listing and its GET."""

    bucket: str
    key: str


@dataclass
class SnapshotTally:
    """What a snapshot saw and did; filled in the calling thread, in key order."""

    buckets: dict[str, BucketSum]
    listed: int = 0
    downloaded: int = 0
    reused: int = 0
    new: int = 0
    changed: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def compare(self, old: Entry | None, listed: Listed) -> None:
        if old is None:
            self.new += 1
        elif old.size != listed.size or old.meta.get("etag") != listed.etag:
            self.changed += 1

    def record(self, entry: Entry) -> None:
        meta = entry.meta
        self.buckets[meta["bucket"]].add(meta["key"], entry.size, entry.sha256, metadata_view(meta))

    def outcome(self, previous: SnapshotHeader | None, before: PreviousEntries, meta: dict[str, Any]) -> SnapshotOutcome:
        totals = {
            "objects": sum(s.objects for s in self.buckets.values()),
            "bytes": sum(s.bytes for s in self.buckets.values()),
        }
        census: dict[str, Any] = {
            "totals": totals,
            "buckets": {name: {"objects": s.objects, "bytes": s.bytes} for name, s in self.buckets.items()},
        }
        figures: dict[str, Any] = {
            "objects_listed": self.listed,
            "objects_downloaded": self.downloaded,
            "objects_reused": self.reused,
            "objects_skipped": len(self.skipped),
            "objects_new": self.new,
            "objects_changed": self.changed,
        }
        if previous is not None and before.usable:
            figures["objects_gone"] = before.unmatched
            if previous.entry_count:
                census["changed_fraction"] = round(self.changed / previous.entry_count, 4)
        if self.skipped:
            meta = {**meta, "skipped": [f"{s.bucket}/{s.key}" for s in self.skipped[:100]]}
        fingerprint = {**totals, "buckets": {name: s.fingerprint() for name, s in self.buckets.items()}}
        return SnapshotOutcome(fingerprint=fingerprint, census=census, meta=meta, figures=figures)


def hash_stream(stream: Any) -> tuple[int, str]:
    """Size and SHA-256 of what ``stream`` holds, read in blocks; the stream is closed."""
    digest = hashlib.sha256()
    size = 0
    try:
        while block := stream.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    finally:
        stream.close()
    return size, digest.hexdigest()
