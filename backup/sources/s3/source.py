"""The S3 / MinIO source (DESIGN section 4, issue 6): bucket snapshots, restore, verification.

Snapshot
    Each configured bucket (buckets by name) is listed page by page, in the UTF-8 binary key order
    the S3 API guarantees, and merged with the previous snapshot's entries, which this module wrote
    in that same order. An object whose size, ETag and last-modified equal its previous entry's
    reuses that entry and its chunks: not a byte is read. New and changed objects are streamed from
    GET into the repository by a bounded pool of ``parallel`` transfers; the entry's SHA-256 is
    computed while streaming. Entries are added in key order through a bounded window, so the merge
    holds one window of transfers in memory, never the previous snapshot's million entries.
    An object that vanishes between listing and reading is skipped and counted; a read that keeps
    failing after bounded retries (``SOURCE_RETRY``) fails the snapshot: nothing is committed.

Entries
    name ``<bucket>/<key>``; meta: bucket, key, etag (unquoted), last_modified (UTC, whole seconds:
    a listing says milliseconds where a GET says seconds), content_type, content_encoding,
    cache_control, content_disposition, content_language, metadata (user metadata). The values come
    from the GET that read the bytes, so they always describe the bytes stored. Tags are not kept.

Census and fingerprint
    census: ``totals`` (objects, bytes), per bucket counts, and ``changed_fraction``: the share of
    the previous snapshot's objects whose content (ETag or size) changed, which the anomaly guard
    reads as the ransomware signature. fingerprint: objects, bytes and, per bucket, a content digest
    over (key, SHA-256) pairs and a metadata digest; both digests are sums of per-object hashes, so
    any listing order gives the same value.

Restore
    Into a bucket (``--to-bucket B [--to-endpoint URL] [--to-prefix P]``): a snapshot of one bucket
    keeps its keys (after ``P``); a snapshot of several buckets puts each object under
    ``<bucket>/``. Objects are PUT (multipart above ``PART_SIZE``) with their metadata, in parallel,
    and only after their bytes matched the snapshot's SHA-256, so a corrupt object never appears.
    Into a directory (``--to-dir DIR``): keys become paths through ``key_to_path``, which can never
    leave DIR (and ``path_to_key`` reverses). The target's credentials: keys given with the options
    (drills' scratch servers), else AWS_ACCESS_KEY_ID / AWS_PROFILE when set, else the source's.

Verify
    With the repository: per key (missing, extra, size; SHA-256 read back and metadata for all or a
    sampled share). Without it (the ``Source`` protocol passes none): every object read back and
    compared per bucket with the fingerprint's counts and digests, which names buckets, not keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol, TypeVar, cast
from urllib.parse import urlparse

import structlog
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter
from backup.repository.retry import RetryPolicy
from backup.repository.s3store import make_client
from backup.sources.base import Progress, RestoreOptions, RestoreResult, SnapshotOutcome, Verdict, Verification
from policies.errors import LifeboatError, RestoreError, SourceError
from policies.model import S3Settings, reveal

log = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MIB = 1024 * 1024
PART_SIZE = 8 * MIB  # restore: one PUT up to this size, multipart of such parts above (memory: one per worker)
MAX_PARTS = 10_000  # S3's limit of parts per upload; huge objects get bigger parts
WINDOW_PER_WORKER = 8  # snapshot: objects queued per worker ahead of the in-order writer (entries, not bytes)
READ_BLOCK = MIB
# Source reads are retried here, once: botocore's own retries are off (make_client). About 2 s of
# waiting in all before a dead endpoint fails the snapshot.
SOURCE_RETRY = RetryPolicy(attempts=5, base_delay=0.25, max_delay=5.0)
MAX_DIFFERENCES = 200  # verify lists this many differences, then says how many more there are
# (entry meta field, S3 API parameter / response field) of what a restore recreates.
META_FIELDS = (
    ("content_type", "ContentType"),
    ("content_encoding", "ContentEncoding"),
    ("cache_control", "CacheControl"),
    ("content_disposition", "ContentDisposition"),
    ("content_language", "ContentLanguage"),
)
_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_GONE_CODES = {"NoSuchKey", "404", "NotFound"}
_OTHER_KINDS_OPTIONS = (
    "to_user",
    "to_password",
    "to_file",
    "to_data_dir",
    "name",
    "initial_cluster",
    "initial_advertise_peer_urls",
    "to_host",
    "to_port",
    "to_http_port",
    "to_database",
    "tables",
)
_TARGET_USAGE = "use --to-bucket B [--to-endpoint URL] [--to-prefix P], or --to-dir DIR; optionally --prefix P"


# ---- calls, retries and what errors mean --------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Whether a botocore error may pass on a retry: throttling, 5xx, refused or dropped connections."""
    if isinstance(exc, ClientError):
        return _code(exc) in _TRANSIENT_CODES or _status(exc) >= 500
    if isinstance(exc, SSLError):
        return False  # a certificate or an http/https mix-up: retrying will not fix it
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError)


def call_with_retry(
    action: Callable[[], T], *, what: str, policy: RetryPolicy = SOURCE_RETRY, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``action()``, retried with backoff and jitter while it fails transiently; the last error is raised."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except (ClientError, BotoCoreError) as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            pause = policy.delay(attempt)
            log.warning("s3.retry", operation=what, attempt=attempt, wait=round(pause, 3), error=str(exc))
            sleep(pause)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Hints:
    """Where the user fixes what an error is about: policy fields for the source, options for a target."""

    endpoint: str
    credentials: str
    bucket: str


def explain(exc: ClientError | BotoCoreError, *, endpoint: str, bucket: str, hints: Hints) -> str:
    """A botocore error in an operator's words, naming what to fix (never a secret)."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket":
            return f"bucket '{bucket}' does not exist at {endpoint}: create it, or fix {hints.bucket}"
        if code in _DENIED_CODES:
            return (
                f"access denied to bucket '{bucket}' at {endpoint} ({code}): check {hints.credentials} and the bucket policy"
            )
        return f"{code or 'error'} from {endpoint} (HTTP {_status(exc)}): {_message(exc)}"
    if isinstance(exc, SSLError):
        return f"TLS with {endpoint} failed ({exc}): check {hints.endpoint} (http or https) and the CA bundle"
    if isinstance(exc, BotoConnectionError):
        return f"cannot connect to {endpoint} ({exc}); is it up? check {hints.endpoint}"
    return f"{endpoint}: {exc}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def run_bounded(workers: int, items: Iterable[T], work: Callable[[T], R], on_result: Callable[[R], None]) -> None:
    """Run ``work`` over ``items`` on ``workers`` threads with at most 2 x workers queued; ``on_result``
    runs in the calling thread, in completion order. The first error cancels what is queued and is raised."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lifeboat-s3")
    pending: set[Future[R]] = set()
    try:
        for item in items:
            pending.add(pool.submit(work, item))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(future.result())
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """One object as a listing shows it."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str


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
                    yield Listed(bucket, key, item["Size"], etag, normalize_time(item["LastModified"]))
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


def reusable(old: Entry, listed: Listed, known_chunks: set[str]) -> bool:
    """Whether ``old`` still describes the listed object, and every chunk it names is in the repository."""
    same = (
        old.size == listed.size
        and old.meta.get("etag") == listed.etag
        and old.meta.get("last_modified") == listed.last_modified
    )
    return same and all(chunk_id in known_chunks for chunk_id, _ in old.chunks)


# ---- census, fingerprint, digests -----------------------------------------------------------------


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


# ---- keys as paths --------------------------------------------------------------------------------

_NAME_MAX = 255  # bytes in one file name (Linux file systems)
_PIECE_MAX = 240  # bytes of a too-long segment per path piece, leaving room for the mark
_CONTINUED = "%+"
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def key_to_path(key: str) -> str:
    """A relative path for ``key`` that stays inside any directory it is joined to, reversibly.

    Per '/'-separated segment: '%' becomes '%25' and NUL '%00'; an empty segment (from '//', a
    leading or a trailing '/') becomes '%'; '.' and '..' become '%2E' and '%2E%2E'; a segment
    longer than a file name may be is cut into pieces of at most 240 bytes, each but the last ending
    in '%+'. Every '%' of the key itself is escaped, so these marks cannot be key text: no path
    segment is ever empty, '.' or '..', and ``path_to_key`` gives the key back."""
    return "/".join(piece for segment in key.split("/") for piece in _encode_segment(segment))


def _encode_segment(segment: str) -> list[str]:
    if not segment:
        return ["%"]
    text = segment.replace("%", "%25").replace("\0", "%00")
    if len(text.encode("utf-8", "surrogatepass")) <= _NAME_MAX:
        return [_dots(text)]
    pieces = _cut(text)
    return [piece + _CONTINUED for piece in pieces[:-1]] + [_dots(pieces[-1])]


def _dots(text: str) -> str:
    return text.replace(".", "%2E") if text in (".", "..") else text


def _cut(text: str) -> list[str]:
    """``text`` in pieces of at most _PIECE_MAX bytes, never splitting a character or a %XX escape."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    index = 0
    while index < len(text):
        token = text[index : index + 3] if text[index] == "%" else text[index]
        width = len(token.encode("utf-8", "surrogatepass"))
        if size + width > _PIECE_MAX:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(token)
        size += width
        index += len(token)
    pieces.append("".join(current))
    return pieces


def path_to_key(path: str) -> str:
    """The key that ``key_to_path`` made ``path`` from; ValueError for a path it cannot have made."""
    segments: list[str] = []
    pending = ""
    for piece in path.split("/"):
        if piece.endswith(_CONTINUED):
            pending += piece[: -len(_CONTINUED)]
            continue
        segments.append(_decode_segment(pending + piece))
        pending = ""
    key = "/".join(segments)
    if pending or key_to_path(key) != path:
        raise ValueError(f"{path!r} is not a path Lifeboat writes for an object key")
    return key


def _decode_segment(text: str) -> str:
    if text == "%":
        return ""
    if "%" in _ESCAPE.sub("", text):
        raise ValueError(f"stray '%' in {text!r}")
    return _ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)


# ---- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketTarget:
    """Restore into ``bucket`` (keys after ``prefix``) at ``endpoint_url``.

    ``select`` is --prefix (on the key as restored, before ``prefix``); ``sample`` is the share of
    objects whose bytes and metadata ``verify`` reads (sizes and names are always compared)."""

    endpoint_url: str | None
    bucket: str
    prefix: str = ""
    select: str = ""
    environment_credentials: bool = False  # AWS_ACCESS_KEY_ID / AWS_PROFILE, resolved by boto3
    credentials: tuple[str, str] | None = field(default=None, repr=False)  # given keys (a drill's scratch server)
    in_place: bool = False  # the bucket is one of the source's own
    sample: float | None = None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS S3'}"


@dataclass(frozen=True)
class DirectoryTarget:
    """Restore into files under ``path`` (see ``key_to_path``); no object metadata is kept there."""

    path: Path
    select: str = ""
    sample: float | None = None

    def describe(self) -> str:
        return str(self.path)


S3Target = BucketTarget | DirectoryTarget


def same_endpoint(first: str | None, second: str | None) -> bool:
    """Whether two endpoint URLs name the same server (scheme, host without case, port with defaults)."""
    if first is None or second is None:
        return first == second

    def parts(url: str) -> tuple[str, str, int | None]:
        parsed = urlparse(url)
        default = {"http": 80, "https": 443}.get(parsed.scheme)
        return parsed.scheme, (parsed.hostname or "").lower(), parsed.port or default

    return parts(first) == parts(second)


@dataclass(frozen=True)
class View:
    """Which of a snapshot's objects a target holds, and under which relative names."""

    buckets: tuple[str, ...]  # the snapshot's buckets
    only_bucket: str | None = None  # in place: only the objects of this (source) bucket
    select: str = ""

    @classmethod
    def of(cls, header: SnapshotHeader, target: S3Target) -> View:
        buckets = tuple(sorted(header.census.get("buckets") or header.fingerprint.get("buckets") or {}))
        only = target.bucket if isinstance(target, BucketTarget) and target.in_place else None
        return cls(buckets, only, target.select)

    @property
    def bucket_segment(self) -> bool:
        """A snapshot of several buckets restores each object under '<bucket>/', so keys cannot collide."""
        return self.only_bucket is None and len(self.buckets) > 1

    def relative(self, entry: Entry) -> str | None:
        bucket, key = str(entry.meta.get("bucket", "")), str(entry.meta.get("key", ""))
        if self.only_bucket is not None and bucket != self.only_bucket:
            return None
        name = f"{bucket}/{key}" if self.bucket_segment else key
        return name if name.startswith(self.select) else None

    def origin(self, relative: str) -> tuple[str, str]:
        """(bucket, key) of a relative name found in a target."""
        if self.only_bucket is not None:
            return self.only_bucket, relative
        if self.bucket_segment:
            bucket, _, key = relative.partition("/")
            return bucket, key
        return (self.buckets[0] if self.buckets else ""), relative

    def naming(self) -> str:
        if self.bucket_segment:
            return "the snapshot holds several buckets: each object goes under '<bucket>/'"
        return "keys are kept as they were"


@dataclass(frozen=True)
class Observed:
    """An object read back from a target: its bytes' SHA-256 and, from a bucket, its metadata."""

    size: int
    sha256: str
    metadata: dict[str, Any] | None


class TargetSide(Protocol):
    """A restore target seen by restore (write) and verify (scan, read)."""

    has_metadata: bool

    def describe(self) -> str: ...
    def first_item(self) -> str | None: ...
    def prepare(self) -> None: ...
    def write(self, repository: Repository, entry: Entry, relative: str, snapshot: str) -> int: ...
    def scan(self) -> Iterator[tuple[str, int]]: ...
    def read(self, relative: str) -> Observed | None: ...


class BucketSide:
    """A target bucket/prefix through boto3."""

    has_metadata = True

    def __init__(self, client: Any, target: BucketTarget, hints: Hints, region: str) -> None:
        self.client = client
        self.target = target
        self.hints = hints
        self.region = region
        self._bucket_exists = True

    def describe(self) -> str:
        return self.target.describe()

    def call(self, action: Callable[[], T], what: str) -> T:
        """A target call with retries; a failure for good becomes a RestoreError saying what to fix."""
        try:
            return call_with_retry(action, what=what)
        except (ClientError, BotoCoreError) as exc:
            raise RestoreError(f"cannot {what} in {self.describe()}: {self._explain(exc)}") from exc

    def first_item(self) -> str | None:
        """A key already under the target prefix, or None (also when the bucket does not exist yet)."""
        request = partial(self.client.list_objects_v2, Bucket=self.target.bucket, Prefix=self.target.prefix, MaxKeys=1)
        try:
            page = call_with_retry(request, what="look at the target")
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise RestoreError(f"cannot look at {self.describe()}: {self._explain(exc)}") from exc
            self._bucket_exists = False
            return None
        except BotoCoreError as exc:
            raise RestoreError(f"cannot look at {self.describe()}: {self._explain(exc)}") from exc
        contents = page.get("Contents", [])
        return str(contents[0]["Key"]) if contents else None

    def _explain(self, exc: ClientError | BotoCoreError) -> str:
        return explain(exc, endpoint=self.target.endpoint_url or "AWS S3", bucket=self.target.bucket, hints=self.hints)

    def prepare(self) -> None:
        if self._bucket_exists:
            return
        where = {} if self.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        self.call(
            partial(self.client.create_bucket, Bucket=self.target.bucket, **where), f"create bucket '{self.target.bucket}'"
        )
        log.info("s3.restore.bucket_created", bucket=self.target.bucket, endpoint=self.target.endpoint_url)

    def write(self, repository: Repository, entry: Entry, relative: str, snapshot: str) -> int:
        """PUT one object with its metadata once its bytes matched the snapshot (multipart when large)."""
        key = self.target.prefix + relative
        arguments = put_arguments(entry.meta)
        if entry.size <= PART_SIZE:
            buffer = io.BytesIO()
            repository.restore_entry(entry, buffer, snapshot=snapshot)

            def put() -> Any:
                buffer.seek(0)  # from the start again on a retry
                return self.client.put_object(Bucket=self.target.bucket, Key=key, Body=buffer, **arguments)

            self.call(put, f"write '{key}'")
            return entry.size
        upload = MultipartUpload(self, key, arguments, part_size(entry.size))
        try:
            repository.restore_entry(entry, cast(BinaryIO, upload), snapshot=snapshot)
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return entry.size

    def scan(self) -> Iterator[tuple[str, int]]:
        start = len(self.target.prefix)
        try:
            for listed in list_bucket(self.client, self.target.bucket, include=[self.target.prefix], exclude=()):
                yield listed.key[start:], listed.size
        except (ClientError, BotoCoreError) as exc:
            raise RestoreError(f"cannot list {self.describe()}: {self._explain(exc)}") from exc

    def read(self, relative: str) -> Observed | None:
        key = self.target.prefix + relative

        def fetch() -> Observed | None:
            try:
                response = self.client.get_object(Bucket=self.target.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _GONE_CODES:
                    return None
                raise
            size, sha256 = _hash_stream(response["Body"])
            return Observed(size, sha256, metadata_view(object_meta(self.target.bucket, key, response)))

        return self.call(fetch, f"read '{key}'")


class MultipartUpload:
    """An object uploaded part by part as ``restore_entry`` hands over blocks; completed only after
    the whole object matched its SHA-256 (``restore_entry`` returned), aborted otherwise."""

    def __init__(self, side: BucketSide, key: str, arguments: dict[str, Any], size: int) -> None:
        self._side = side
        self._key = key
        self._part_size = size
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        bucket = side.target.bucket
        self._common = {"Bucket": bucket, "Key": key}
        created = side.call(partial(side.client.create_multipart_upload, **self._common, **arguments), f"start '{key}'")
        self._upload_id: str = created["UploadId"]

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            with memoryview(self._buffer) as view:
                part = bytes(view[: self._part_size])  # one copy, not two (memory: one part per worker)
            del self._buffer[: self._part_size]
            self._send(part)
        return len(data)

    def _send(self, body: bytes) -> None:
        number = len(self._parts) + 1
        request = partial(
            self._side.client.upload_part, **self._common, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        done = self._side.call(request, f"write part {number} of '{self._key}'")
        self._parts.append({"PartNumber": number, "ETag": done["ETag"]})

    def complete(self) -> None:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        request = partial(
            self._side.client.complete_multipart_upload,
            **self._common,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._side.call(request, f"complete '{self._key}'")

    def abort(self) -> None:
        try:
            self._side.client.abort_multipart_upload(**self._common, UploadId=self._upload_id)
        except (ClientError, BotoCoreError) as exc:  # the upload expires by the bucket's lifecycle anyway
            log.warning("s3.restore.abort_failed", key=self._key, error=str(exc))


def part_size(size: int) -> int:
    """PART_SIZE, or whole MiBs large enough to stay within S3's 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // MIB) * MIB)


def put_arguments(meta: Mapping[str, Any]) -> dict[str, Any]:
    """PUT parameters that recreate an object's metadata."""
    arguments: dict[str, Any] = {api: meta[name] for name, api in META_FIELDS if meta.get(name)}
    if meta.get("metadata"):
        arguments["Metadata"] = dict(meta["metadata"])
    return arguments


def _hash_stream(stream: Any) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        while block := stream.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    finally:
        stream.close()
    return size, digest.hexdigest()


class DirectorySide:
    """A target directory: each object a file at ``key_to_path``, written atomically, never outside."""

    has_metadata = False

    def __init__(self, target: DirectoryTarget) -> None:
        self.root = target.path
        self.target = target

    def describe(self) -> str:
        return str(self.root)

    def first_item(self) -> str | None:
        if not self.root.exists():
            return None
        if not self.root.is_dir():
            raise RestoreError(f"{self.root} exists and is not a directory")
        return next((entry.name for entry in self.root.iterdir()), None)

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RestoreError(f"cannot create {self.root}: {exc.strerror}") from exc

    def write(self, repository: Repository, entry: Entry, relative: str, snapshot: str) -> int:
        """Write one object's verified bytes to its file (temporary file, then rename into place)."""
        path = self.root / key_to_path(relative)
        parent = self._parent(path, relative)
        handle, temporary = tempfile.mkstemp(dir=parent, prefix=".lifeboat-", suffix=".part")
        try:
            os.fchmod(handle, 0o644)
            with os.fdopen(handle, "wb") as out:
                repository.restore_entry(entry, out, snapshot=snapshot)
            Path(temporary).replace(path)
        except IsADirectoryError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise RestoreError(self._clash(relative)) from exc
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _set_mtime(path, entry.meta.get("last_modified"))
        return entry.size

    def _parent(self, path: Path, relative: str) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise RestoreError(self._clash(relative)) from exc
        except OSError as exc:
            raise RestoreError(f"cannot create the directory of '{relative}' under {self.root}: {exc.strerror}") from exc
        # key_to_path cannot leave the root; a symbolic link already in a non-empty target could.
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            raise RestoreError(f"'{relative}' would be written outside {self.root} through a symbolic link; refusing")
        return path.parent

    def _clash(self, relative: str) -> str:
        return (
            f"'{relative}' cannot be written under {self.root}: another key needs the same path as a file and as a "
            "directory (S3 allows 'a' and 'a/b' side by side, a file system does not); restore to a bucket, or "
            "split the restore with --prefix"
        )

    def scan(self) -> Iterator[tuple[str, int]]:
        if not self.root.is_dir():
            raise RestoreError(f"{self.root} does not exist or is not a directory")
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = Path(folder, name)
                relative = path.relative_to(self.root).as_posix()
                try:
                    key = path_to_key(relative)
                except ValueError:
                    key = relative  # not a path a restore writes: reported as extra, as it stands
                yield key, path.lstat().st_size

    def read(self, relative: str) -> Observed | None:
        try:
            with (self.root / key_to_path(relative)).open("rb") as stream:
                size, sha256 = _hash_stream(stream)
        except FileNotFoundError:
            return None
        return Observed(size, sha256, None)


def _set_mtime(path: Path, last_modified: Any) -> None:
    """Give the file its object's last-modified time (a convenience: nothing depends on it)."""
    if isinstance(last_modified, str):
        try:
            moment = datetime.fromisoformat(last_modified).timestamp()
        except ValueError:
            return
        os.utime(path, (moment, moment))


def _size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# ---- the source -------------------------------------------------------------------------------


class S3Source:
    """Buckets of an S3-compatible endpoint (MinIO, AWS, Ceph...). Cheap to create: clients are made per call."""

    kind: ClassVar[str] = "s3"

    def __init__(self, name: str, settings: S3Settings) -> None:
        self.name = name
        self.settings = settings
        self.endpoint = settings.endpoint_url or "AWS S3"
        self.hints = Hints(
            endpoint=f"sources.{name}.endpoint_url",
            credentials=f"sources.{name}.access_key_id / secret_access_key",
            bucket=f"sources.{name}.buckets",
        )

    def _client(self, endpoint_url: str | None, keys: tuple[str | None, str | None] | None = None) -> Any:
        """A client with ``keys``, or the source's own; (None, None) lets boto3 find credentials."""
        settings = self.settings
        access_key_id, secret_access_key = keys or (reveal(settings.access_key_id), reveal(settings.secret_access_key))
        return make_client(
            endpoint_url=endpoint_url,
            region=settings.region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            addressing_style=settings.addressing_style,
            max_pool=settings.parallel + 4,
        )

    def _call(self, action: Callable[[], T], *, bucket: str, what: str) -> T:
        """A source call with retries; a failure for good becomes a SourceError saying what to fix."""
        try:
            return call_with_retry(action, what=what)
        except (ClientError, BotoCoreError) as exc:
            reason = explain(exc, endpoint=self.endpoint, bucket=bucket, hints=self.hints)
            raise SourceError(f"source '{self.name}': cannot {what}: {reason}") from exc

    # ---- snapshot -----------------------------------------------------------------------------

    def snapshot(
        self, writer: SnapshotWriter, previous: SnapshotHeader | None, *, progress: Progress | None = None
    ) -> SnapshotOutcome:
        """Add an entry per object of the configured buckets; unchanged objects reuse ``previous``'s.

        Raises SourceError (a bucket missing, access denied, the endpoint down, a read failing for
        good); the caller then commits nothing."""
        client = self._client(self.settings.endpoint_url)
        buckets = sorted(set(self.settings.buckets))
        if writer.shard is not None:  # one part of a sharded run (backup/repository/parts.py): its buckets
            buckets = writer.shard.pick(buckets)
        for bucket in buckets:  # every bucket answers before any byte moves: errors come early
            self._call(partial(client.list_objects_v2, Bucket=bucket, MaxKeys=1), bucket=bucket, what=f"list '{bucket}'")
        if previous is not None and previous.kind != self.kind:
            previous = None
        entries = writer.repository.entries(previous) if previous is not None else None
        if entries is not None and writer.shard is not None:  # other shards' buckets are not gone
            entries = (entry for entry in entries if entry.meta.get("bucket") in buckets)
        before = PreviousEntries(entries)
        tally = SnapshotTally(buckets={bucket: BucketSum() for bucket in buckets})
        self._transfer(client, writer, self._listing(client, buckets), before, tally, progress)
        before.finish()
        meta = {"endpoint": self.endpoint, "buckets": buckets, "key_order": "bucket, then UTF-8 binary key"}
        log.info(
            "s3.snapshot.read",
            source=self.name,
            objects=tally.listed,
            downloaded=tally.downloaded,
            reused=tally.reused,
            skipped=len(tally.skipped),
        )
        return tally.outcome(previous, before, meta)

    def _listing(self, client: Any, buckets: Sequence[str]) -> Iterator[Listed]:
        for bucket in buckets:
            listing = list_bucket(client, bucket, include=self.settings.include, exclude=self.settings.exclude)
            try:
                yield from listing
            except (ClientError, BotoCoreError) as exc:
                reason = explain(exc, endpoint=self.endpoint, bucket=bucket, hints=self.hints)
                raise SourceError(f"source '{self.name}': cannot list '{bucket}': {reason}") from exc

    def _transfer(
        self,
        client: Any,
        writer: SnapshotWriter,
        listing: Iterator[Listed],
        before: PreviousEntries,
        tally: SnapshotTally,
        progress: Progress | None,
    ) -> None:
        """Reuse or download every listed object; entries reach the writer in listing order."""
        workers = self.settings.parallel
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"lifeboat-s3-{self.name}")
        window: deque[Entry | Future[Entry | Skipped]] = deque()
        try:
            for listed in listing:
                tally.listed += 1
                old = before.take(listed.bucket, listed.key)
                tally.compare(old, listed)
                if old is not None and reusable(old, listed, writer.known):
                    window.append(old)
                else:
                    window.append(pool.submit(self._download, client, writer, listed, progress))
                _settle(window, writer, tally, keep=workers * WINDOW_PER_WORKER)
            _settle(window, writer, tally, keep=0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _download(self, client: Any, writer: SnapshotWriter, listed: Listed, progress: Progress | None) -> Entry | Skipped:
        """Stream one object into the repository (whole again on a retry: a chunk already stored is
        not uploaded twice); Skipped if it is gone."""

        def attempt() -> Entry | Skipped:
            try:
                response = client.get_object(Bucket=listed.bucket, Key=listed.key)
            except ClientError as exc:
                if _code(exc) in _GONE_CODES:
                    return Skipped(listed.bucket, listed.key)
                raise
            body = response["Body"]
            try:
                stored = writer.write_stream(cast(BinaryIO, body), progress=progress)
            finally:
                body.close()
            meta = object_meta(listed.bucket, listed.key, response)
            return Entry(f"{listed.bucket}/{listed.key}", stored.size, stored.sha256, stored.chunks, meta)

        return self._call(attempt, bucket=listed.bucket, what=f"read s3://{listed.bucket}/{listed.key}")

    # ---- restore ------------------------------------------------------------------------------

    def parse_target(self, options: RestoreOptions) -> S3Target:
        """A BucketTarget or DirectoryTarget from the S3 options; RestoreError for options of other
        kinds, a missing or doubled target, or the source bucket itself without --in-place."""
        foreign = options.given(*_OTHER_KINDS_OPTIONS)
        if foreign:
            named = ", ".join("--" + name.replace("_", "-") for name in foreign)
            raise RestoreError(f"{named}: not an option for s3 source '{self.name}'; {_TARGET_USAGE}")
        select = options.prefix or ""
        if options.to_dir:
            if options.given("to_endpoint", "to_bucket", "to_prefix", "in_place"):
                raise RestoreError(f"--to-dir cannot be combined with a bucket target; {_TARGET_USAGE}")
            return DirectoryTarget(Path(options.to_dir).absolute(), select=select)
        if not options.to_bucket:
            raise RestoreError(f"no restore target given for s3 source '{self.name}'; {_TARGET_USAGE}")
        endpoint = self._target_endpoint(options.to_endpoint)
        prefix = options.to_prefix or ""
        in_place = same_endpoint(endpoint, self.settings.endpoint_url) and options.to_bucket in self.settings.buckets
        if in_place and not options.in_place:
            raise RestoreError(
                f"s3://{options.to_bucket} at {endpoint or 'AWS S3'} is a bucket of source '{self.name}' itself: "
                "writing over it needs --in-place --yes; to restore beside it, choose another --to-bucket"
            )
        if options.in_place and not in_place:
            raise RestoreError(f"--in-place: s3://{options.to_bucket} at {endpoint} is not a bucket of source '{self.name}'")
        return BucketTarget(
            endpoint_url=endpoint,
            bucket=options.to_bucket,
            prefix=prefix if not prefix or prefix.endswith("/") else prefix + "/",
            select=select,
            environment_credentials=bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")),
            in_place=in_place,
            credentials=_given_keys(options),
        )

    def _target_endpoint(self, given: str | None) -> str | None:
        if given is None:
            return self.settings.endpoint_url
        parsed = urlparse(given)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RestoreError(f"--to-endpoint '{given}' is not an http(s) URL like http://minio:9000")
        return given.rstrip("/")

    def _side(self, target: S3Target) -> TargetSide:
        """How to write and read ``target``; a bucket's client uses, in order: the keys given with the
        target, the AWS environment (AWS_ACCESS_KEY_ID / AWS_PROFILE), the source's own keys."""
        if isinstance(target, DirectoryTarget):
            return DirectorySide(target)
        keys: tuple[str | None, str | None] | None = target.credentials
        if keys is not None:
            credentials = "the access key given for the target"
        elif target.environment_credentials:
            credentials = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) of the environment"
            keys = (None, None)
        else:
            credentials = f"sources.{self.name}.access_key_id / secret_access_key (or set AWS_ACCESS_KEY_ID / AWS_PROFILE)"
        hints = Hints(endpoint="--to-endpoint", credentials=credentials, bucket="--to-bucket")
        return BucketSide(self._client(target.endpoint_url, keys), target, hints, self.settings.region)

    def restore(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: Any,
        *,
        options: RestoreOptions,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Recreate ``header``'s objects (those under --prefix) in ``target``, in parallel.

        Refuses a non-empty target without --yes and the source bucket without --in-place --yes;
        with --dry-run, counts what would be restored. Raises RestoreError, IntegrityError."""
        started = time.monotonic()
        side = self._side(target)
        view = View.of(header, target)
        occupied = side.first_item()
        plan = _plan(target, view, occupied)
        if options.dry_run:
            count, size = _count(repository, header, view)
            plan.insert(0, f"would restore {count} objects ({_size_text(size)}) of snapshot {header.id}")
            return self._result(header, side, started, True, count, size, plan)
        if isinstance(target, BucketTarget) and target.in_place and not options.yes:
            raise RestoreError(f"{side.describe()} is the source bucket itself: writing over it needs --in-place --yes")
        if occupied is not None and not options.yes:
            raise RestoreError(
                f"{side.describe()} is not empty (it holds '{occupied}'): add --yes to write into it "
                "(objects of the same name are replaced)"
            )
        side.prepare()
        count, size = self._restore_objects(repository, header, side, view, progress)
        plan.insert(0, f"restored {count} objects ({_size_text(size)}) of snapshot {header.id}, each verified (SHA-256)")
        log.info("s3.restore.completed", source=self.name, snapshot=header.id, target=side.describe(), objects=count)
        return self._result(header, side, started, False, count, size, plan)

    def _restore_objects(
        self, repository: Repository, header: SnapshotHeader, side: TargetSide, view: View, progress: Progress | None
    ) -> tuple[int, int]:
        totals = [0, 0]

        def selected() -> Iterator[tuple[Entry, str]]:
            for entry in repository.entries(header):
                relative = view.relative(entry)
                if relative is not None:
                    yield entry, relative

        def restore_one(item: tuple[Entry, str]) -> int:
            return side.write(repository, item[0], item[1], header.id)

        def done(size: int) -> None:
            totals[0] += 1
            totals[1] += size
            if progress:
                progress(size)

        run_bounded(self.settings.parallel, selected(), restore_one, done)
        return totals[0], totals[1]

    def _result(
        self, header: SnapshotHeader, side: TargetSide, started: float, dry_run: bool, count: int, size: int, plan: list[str]
    ) -> RestoreResult:
        return RestoreResult(
            source=self.name,
            snapshot=header.id,
            target=side.describe(),
            dry_run=dry_run,
            seconds=time.monotonic() - started,
            bytes=size,
            figures={"objects": count},
            plan=plan,
        )

    # ---- verify -------------------------------------------------------------------------------

    def verify(
        self,
        header: SnapshotHeader,
        target: Any,
        *,
        repository: Repository | None = None,
        sample: float | None = None,
    ) -> Verification:
        """Compare a restored bucket/prefix or directory with snapshot ``header``; never raises for a mismatch.

        With ``repository`` (the snapshot's entries): missing, extra and differing keys by name
        (size for all; SHA-256, read back, and metadata for a ``sample`` share, default the
        target's or all). Without it: per bucket count, bytes and digests of every object read
        back, against the fingerprint. UNVERIFIED, with the reason, when the target cannot be read."""
        share = sample if sample is not None else (target.sample or 1.0)
        if not 0 < share <= 1:
            raise ValueError(f"sample must be above 0 and at most 1, not {share}")
        view = View.of(header, target)
        try:
            side = self._side(target)
            if repository is None:
                return self._verify_fingerprint(header, side, view)
            return self._verify_entries(repository, header, side, view, share)
        except (LifeboatError, ClientError, BotoCoreError, OSError) as exc:
            return Verification(
                Verdict.UNVERIFIED, f"could not verify {target.describe()} against snapshot {header.id}: {exc}"
            )

    def _verify_entries(
        self, repository: Repository, header: SnapshotHeader, side: TargetSide, view: View, share: float
    ) -> Verification:
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
        run_bounded(self.settings.parallel, chosen, lambda item: _compare(side, *item), differences.extend)
        checked = {
            "mode": "entries",
            "objects_expected": total,
            "objects_found": total - len(expected),
            "objects_read": len(chosen),
            "share_read": share,
            "metadata_compared": side.has_metadata,
        }
        return _verification(header, side, sorted(differences), checked)

    def _verify_fingerprint(self, header: SnapshotHeader, side: TargetSide, view: View) -> Verification:
        if view.select:
            return Verification(
                Verdict.UNVERIFIED,
                f"{side.describe()} holds only keys under '{view.select}': verify it against the snapshot's entries "
                "(verify(..., repository=...)), the fingerprint covers whole buckets",
            )
        sums: dict[str, BucketSum] = {}
        vanished: list[str] = []

        def read(relative: str) -> tuple[str, Observed | None]:
            return relative, side.read(relative)

        def add(item: tuple[str, Observed | None]) -> None:
            relative, seen = item
            if seen is None:
                vanished.append(f"missing: {relative} (vanished while verifying)")
                return
            bucket, key = view.origin(relative)
            sums.setdefault(bucket, BucketSum()).add(key, seen.size, seen.sha256, seen.metadata)

        run_bounded(self.settings.parallel, (relative for relative, _ in side.scan()), read, add)
        wanted = header.fingerprint.get("buckets", {})
        if view.only_bucket is not None:
            wanted = {view.only_bucket: wanted.get(view.only_bucket, {})}
        differences = vanished + _fingerprint_differences(wanted, sums, metadata=side.has_metadata)
        checked = {
            "mode": "fingerprint",
            "objects_found": sum(s.objects for s in sums.values()),
            "objects_read": sum(s.objects for s in sums.values()),
            "share_read": 1.0,
            "metadata_compared": side.has_metadata,
        }
        return _verification(header, side, differences, checked)


def _plan(target: S3Target, view: View, occupied: str | None) -> list[str]:
    """What a restore into ``target`` does, in lines for the operator (and the --dry-run plan)."""
    lines: list[str] = []
    if isinstance(target, BucketTarget) or view.bucket_segment:
        lines.append(view.naming())
    if view.select:
        lines.append(f"only keys starting with '{view.select}'")
    if isinstance(target, BucketTarget):
        lines.append(
            "metadata restored: Content-Type, Content-Encoding, Cache-Control, Content-Disposition, "
            "Content-Language, user metadata"
        )
        if target.credentials:
            who = "the access key given for the target"
        elif target.environment_credentials:
            who = "AWS environment (AWS_ACCESS_KEY_ID / AWS_PROFILE)"
        else:
            who = "the source's"
        lines.append(f"credentials: {who}")
        if target.in_place:
            lines.append("IN PLACE: objects of the source bucket are overwritten (needs --in-place --yes)")
    else:
        lines.append("keys become paths by key_to_path ('%' escapes; empty, '.' and '..' segments escaped)")
        lines.append("a directory keeps bytes only: no Content-Type or user metadata")
    if occupied is not None:
        lines.append(f"target is not empty (holds '{occupied}'): --yes is needed")
    return lines


def _given_keys(options: RestoreOptions) -> tuple[str, str] | None:
    """The target's own access key from the options (drills pass their scratch server's), if any."""
    if options.to_access_key_id is None and options.to_secret_access_key is None:
        return None
    if not options.to_access_key_id or not options.to_secret_access_key:
        raise RestoreError("give both the target's access key id and its secret access key, or neither")
    return options.to_access_key_id, options.to_secret_access_key


def _count(repository: Repository, header: SnapshotHeader, view: View) -> tuple[int, int]:
    count = size = 0
    for entry in repository.entries(header):
        if view.relative(entry) is not None:
            count += 1
            size += entry.size
    return count, size


def _settle(
    window: deque[Entry | Future[Entry | Skipped]], writer: SnapshotWriter, tally: SnapshotTally, *, keep: int
) -> None:
    """Hand finished items at the head of ``window`` to the writer, in order; block on the head while
    more than ``keep`` items wait (the bound on memory and on how far listing runs ahead)."""
    while window:
        head = window[0]
        if len(window) <= keep and isinstance(head, Future) and not head.done():
            return
        window.popleft()
        if isinstance(head, Entry):
            tally.reused += 1
            result: Entry | Skipped = head
        else:
            result = head.result()
            if isinstance(result, Entry):
                tally.downloaded += 1
        if isinstance(result, Skipped):
            log.warning("s3.object_vanished", bucket=result.bucket, key=result.key, effect="skipped")
            tally.skipped.append(result)
            continue
        writer.add(result)
        tally.record(result)


@dataclass(frozen=True, slots=True)
class Expected:
    """What verify expects of one object: an entry without its chunk list."""

    size: int
    sha256: str
    metadata: dict[str, Any]


def _expected(repository: Repository, header: SnapshotHeader, view: View) -> dict[str, Expected]:
    """The snapshot's objects that ``view`` selects, by relative name. The cost: some 300 bytes per
    object while verifying (a target can be listed in any order, so a merge cannot replace it)."""
    expected: dict[str, Expected] = {}
    for entry in repository.entries(header):
        relative = view.relative(entry)
        if relative is not None:
            expected[relative] = Expected(entry.size, entry.sha256, metadata_view(entry.meta))
    return expected


def _compare(side: TargetSide, relative: str, wanted: Expected) -> list[str]:
    """Differences between one restored object, read back, and what the snapshot holds."""
    seen = side.read(relative)
    if seen is None:
        return [f"missing: {relative} (vanished while verifying)"]
    if seen.size != wanted.size or seen.sha256 != wanted.sha256:
        return [f"differs: {relative}: content (SHA-256 {seen.sha256[:12]}..., the snapshot has {wanted.sha256[:12]}...)"]
    if seen.metadata is None:
        return []
    return [
        f"differs: {relative}: {name} {seen.metadata.get(name)!r}, the snapshot has {value!r}"
        for name, value in wanted.metadata.items()
        if seen.metadata.get(name) != value
    ]


def _fingerprint_differences(wanted: Mapping[str, Any], sums: Mapping[str, BucketSum], *, metadata: bool) -> list[str]:
    differences = [
        f"extra: objects of bucket '{bucket}', which the snapshot does not hold" for bucket in sums if bucket not in wanted
    ]
    fields = ("objects", "bytes", "content_digest", *(("metadata_digest",) if metadata else ()))
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
    what = "content and metadata" if checked["metadata_compared"] else "content"
    message = (
        f"{side.describe()} matches snapshot {header.id}: {checked['objects_found']} objects, "
        f"{what} read back for {read} ({checked['share_read']:.0%})"
    )
    return Verification(Verdict.MATCH, message, [], checked)
