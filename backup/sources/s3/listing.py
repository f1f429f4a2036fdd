"""Bucket listings, in key order, and the previous snapshot's entries walked beside them (the
incremental merge join): what decides that an object is reused rather than read again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from backup.repository.manifest import Entry
from backup.repository.packs import ChunkSink
from backup.sources.s3.calls import call_with_retry
from policies.errors import LifeboatError, SourceError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Listed:
    """One object as a listing shows it."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str
    storage_class: str = "STANDARD"  # a lifecycle transition changes it, not the ETag or the time


def normalize_etag(etag: str) -> str:
    return etag.strip('"')


def normalize_time(moment: datetime) -> str:
    """UTC, whole seconds: what both a listing (milliseconds) and a GET (seconds) can agree on."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def key_prefixes(include: Sequence[str]) -> list[str]:
    """The include prefixes to list, sorted, none inside another (so listings do not overlap and
    their concatenation stays in key order); ``[""]`` (everything) when none is given."""
    kept: list[str] = []
    for prefix in sorted(set(include)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept or [""]


def list_bucket(client: Any, bucket: str, *, include: Sequence[str], exclude: Sequence[str]) -> Iterator[Listed]:
    """The bucket's objects under the include prefixes, minus the exclude prefixes, in key order.

    Each page request is retried on its own; a listing that is not in UTF-8 binary order (which the
    S3 API guarantees) raises SourceError, because the incremental merge depends on it."""
    last = ""
    skip = tuple(exclude)
    for prefix in key_prefixes(include):
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = call_with_retry(
                partial(client.list_objects_v2, Bucket=bucket, Prefix=prefix, **extra), what=f"list s3://{bucket}/{prefix}"
            )
            for item in page.get("Contents", []):
                key = item["Key"]
                if last and key <= last:
                    raise SourceError(
                        f"s3://{bucket} listed '{key}' after '{last}': the endpoint does not list keys in UTF-8 "
                        "binary order as the S3 API requires, and incremental snapshots rely on it"
                    )
                last = key
                if not key.startswith(skip):
                    etag = normalize_etag(item.get("ETag", ""))
                    moment = normalize_time(item["LastModified"])
                    yield Listed(bucket, key, item["Size"], etag, moment, item.get("StorageClass") or "STANDARD")
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]


# ---- the previous snapshot, merged with the listing ---------------------------------------------


class PreviousEntries:
    """The previous snapshot's entries, walked once in (bucket, key) order beside the new listing.

    A merge join: both sides are sorted, so memory is one entry whatever the bucket size (a dict of
    a million entries would cost some 500 MB). A previous stream that is out of order or unreadable
    stops being used (and says so): the snapshot then downloads everything, which costs time but
    never correctness, and no changed share can be stated."""

    def __init__(self, entries: Iterator[Entry] | None) -> None:
        self._entries = entries
        self.usable = entries is not None
        self.unmatched = 0  # previous objects the listing did not have (deleted, or out of scope now)
        self._head: Entry | None = None
        self._head_id: tuple[str, str] | None = None
        self._advance()

    def take(self, bucket: str, key: str) -> Entry | None:
        """The previous entry of ``bucket``/``key`` or None; call in increasing (bucket, key) order."""
        wanted = (bucket, key)
        while self._head_id is not None and self._head_id < wanted:
            self.unmatched += 1
            self._advance()
        if self._head_id != wanted:
            return None
        found = self._head
        self._advance()
        return found

    def finish(self) -> None:
        """Walk to the end, counting the previous objects that were not listed this time."""
        while self._head_id is not None:
            self.unmatched += 1
            self._advance()

    def _advance(self) -> None:
        self._head, previous_id, self._head_id = None, self._head_id, None
        if not self.usable or self._entries is None:
            return
        try:
            entry = next(self._entries, None)
        except LifeboatError as exc:
            self._give_up("unreadable", str(exc))
            return
        if entry is None:
            return
        entry_id = (str(entry.meta.get("bucket", "")), str(entry.meta.get("key", "")))
        if previous_id is not None and entry_id <= previous_id:
            self._give_up("not in key order", entry.name)
            return
        self._head, self._head_id = entry, entry_id

    def _give_up(self, why: str, detail: str) -> None:
        log.warning("s3.previous_unusable", reason=why, detail=detail, effect="objects are read again, not reused")
        self.usable = False


def reusable(old: Entry, listed: Listed, sink: ChunkSink) -> bool:
    """Whether ``old`` still describes the listed object's bytes, and every chunk it names is in the
    repository. Its tags may have changed all the same (S3 changes neither ETag nor time for that):
    the snapshot reads them again for every object."""
    same = (
        old.size == listed.size
        and old.meta.get("etag") == listed.etag
        and old.meta.get("last_modified") == listed.last_modified
    )
    return same and all(sink.holds(ref) for ref in old.chunks)
