"""Entries, listings and snapshot headers for the S3 source's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime

from backup.repository.manifest import ChunkRef, Entry, SnapshotHeader
from backup.sources.s3.listing import Listed

T0 = "2026-11-28T02:00:00+00:00"


def entry(bucket: str, key: str, *, size: int = 10, etag: str = "e", chunks: list[tuple[str, int]] | None = None) -> Entry:
    meta = {"bucket": bucket, "key": key, "etag": etag, "last_modified": T0, "content_type": "text/plain"}
    return Entry(f"{bucket}/{key}", size, "0" * 64, chunks if chunks is not None else [ChunkRef("c-" + key, size)], meta)


def listed(bucket: str, key: str, *, size: int = 10, etag: str = "e", modified: str = T0) -> Listed:
    return Listed(bucket, key, size, etag, modified)


def header(
    entry_count: int, *, census: dict[str, object] | None = None, fingerprint: dict[str, object] | None = None
) -> SnapshotHeader:
    moment = datetime(2026, 11, 28, 2, tzinfo=UTC)
    return SnapshotHeader(
        "models-20261128T020000Z-ab12", "models", "s3", moment, moment, "good", "0.1.0", entry_count, 0, [],
        fingerprint=fingerprint or {}, census=census or {},
    )  # fmt: skip
