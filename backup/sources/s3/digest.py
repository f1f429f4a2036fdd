"""What a snapshot says about its buckets: each entry's metadata, order-independent per-bucket
digests (the fingerprint), the census and the figures of a snapshot run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

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


# Kept since issue 13, and in the view only when set: a snapshot taken before (which never holds
# them) keeps the metadata digest it had, and its restored copies still match it.
OPTIONAL_FIELDS = (("expires", "Expires"), ("website_redirect_location", "WebsiteRedirectLocation"))
STANDARD = "STANDARD"  # the storage class S3 omits from GET and HEAD answers


def metadata_view(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a restore recreates and a verification compares (tags and the storage class apart)."""
    view: dict[str, Any] = {name: meta.get(name) for name, _ in META_FIELDS}
    view["metadata"] = dict(meta.get("metadata") or {})
    view.update({name: meta[name] for name, _ in OPTIONAL_FIELDS if meta.get(name)})
    return view


def object_meta(bucket: str, key: str, response: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's meta from the GET (or HEAD) response that describes the bytes read (the storage
    class and the tags are added by the caller: the listing and GetObjectTagging say them)."""
    meta: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "etag": normalize_etag(str(response.get("ETag", ""))),
        "last_modified": normalize_time(response["LastModified"]),
    }
    meta.update({name: response[api] for name, api in META_FIELDS if response.get(api)})
    if response.get("Metadata"):
        meta["metadata"] = dict(response["Metadata"])
    if isinstance(response.get("Expires"), datetime):  # an unparsable Expires header is not kept
        meta["expires"] = response["Expires"].astimezone(UTC).isoformat()
    if response.get("WebsiteRedirectLocation"):
        meta["website_redirect_location"] = response["WebsiteRedirectLocation"]
    return meta


def tag_dict(response: Mapping[str, Any]) -> dict[str, str]:
    """Tags of a GetObjectTagging answer as a dict (S3 allows each key once)."""
    return {str(tag["Key"]): str(tag["Value"]) for tag in response.get("TagSet", [])}


def tagging_header(tags: Mapping[str, str]) -> str:
    """Tags as PutObject's and CreateMultipartUpload's ``Tagging`` parameter (URL query encoding)."""
    return urlencode(sorted(tags.items()), quote_via=quote)


def _pair_hash(*parts: str) -> int:
    digest = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(raw) + raw)
    return int.from_bytes(digest.digest(), "big")


@dataclass
class BucketSum:
    """Count, bytes and order-independent digests of one bucket's objects.

    The tags and storage-class digests are None (and left out of the fingerprint) once one object
    came without them: a snapshot taken before they were kept, or an endpoint without tagging."""

    objects: int = 0
    bytes: int = 0
    content: int = 0
    metadata: int = 0
    tags: int | None = 0
    storage_class: int | None = 0

    def add(
        self,
        key: str,
        size: int,
        sha256: str,
        view: Mapping[str, Any] | None,
        *,
        tags: Mapping[str, str] | None = None,
        storage_class: str | None = None,
    ) -> None:
        self.objects += 1
        self.bytes += size
        # Sums of per-object hashes: equal for any listing order, so a restored copy listed (or
        # walked) differently still gives the same digest.
        self.content = (self.content + _pair_hash(key, sha256)) % 2**256
        if view is not None:
            self.metadata = (self.metadata + _pair_hash(key, json.dumps(view, sort_keys=True))) % 2**256
        self.tags = None if tags is None or self.tags is None else (self.tags + _pair_hash(key, _tag_text(tags))) % 2**256
        if storage_class is None or self.storage_class is None:
            self.storage_class = None
        else:
            self.storage_class = (self.storage_class + _pair_hash(key, storage_class)) % 2**256

    def fingerprint(self) -> dict[str, Any]:
        found = {
            "objects": self.objects,
            "bytes": self.bytes,
            "content_digest": f"{self.content:064x}",
            "metadata_digest": f"{self.metadata:064x}",
        }
        if self.tags is not None:
            found["tags_digest"] = f"{self.tags:064x}"
        if self.storage_class is not None:
            found["storage_class_digest"] = f"{self.storage_class:064x}"
        return found


def _tag_text(tags: Mapping[str, str]) -> str:
    return json.dumps(sorted(tags.items()))


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
    retagged: int = 0  # reused objects whose tags changed (S3 changes neither ETag nor time for that)
    skipped: list[Skipped] = field(default_factory=list)

    def compare(self, old: Entry | None, listed: Listed) -> None:
        if old is None:
            self.new += 1
        elif old.size != listed.size or old.meta.get("etag") != listed.etag:
            self.changed += 1

    def record(self, entry: Entry) -> None:
        meta = entry.meta
        self.buckets[meta["bucket"]].add(
            meta["key"],
            entry.size,
            entry.sha256,
            metadata_view(meta),
            tags=meta.get("tags"),
            storage_class=meta.get("storage_class"),
        )

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
            "objects_retagged": self.retagged,
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
