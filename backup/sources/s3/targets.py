"""Restore targets: a bucket/prefix (``BucketTarget``) or a directory (``DirectoryTarget``), which of
a snapshot's objects they hold (``View``), and how restore writes and verify reads them
(``TargetSide``: ``BucketSide`` through boto3, multipart above ``PART_SIZE``; ``DirectorySide``)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, cast
from urllib.parse import urlparse

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.s3.calls import GONE_CODES, Hints, call_with_retry, error_code, explain
from backup.sources.s3.digest import (
    META_FIELDS,
    STANDARD,
    hash_stream,
    metadata_view,
    object_meta,
    tag_dict,
    tagging_header,
)
from backup.sources.s3.keypath import key_to_path, path_to_key
from backup.sources.s3.listing import list_bucket
from backup.sources.unfinished import MARK_SUFFIX, RestoreMark, cannot_write, remove_leftovers
from policies.errors import RestoreError

log = structlog.get_logger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
PART_SIZE = 8 * MIB  # restore: one PUT up to this size, multipart of such parts above (memory: one per worker)
MAX_PARTS = 10_000  # S3's limit of parts per upload; huge objects get bigger parts


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
    """An object read back from a target: its bytes' SHA-256 and, from a bucket, its metadata, and
    its tags and storage class when asked for (None: not read)."""

    size: int
    sha256: str
    metadata: dict[str, Any] | None
    tags: dict[str, str] | None = None
    storage_class: str | None = None


class TargetSide(Protocol):
    """A restore target seen by restore (write) and verify (scan, read)."""

    has_metadata: bool
    keeps_storage_class: bool

    def describe(self) -> str: ...
    def first_item(self) -> str | None: ...
    def creates(self) -> str | None: ...
    def unfinished(self) -> str | None: ...
    def prepare(self) -> None: ...
    def writing(self, snapshot: str) -> contextlib.AbstractContextManager[None]: ...
    def write(self, repository: Repository, entry: Entry, relative: str, snapshot: str) -> int: ...
    def scan(self) -> Iterator[tuple[str, int]]: ...
    def read(self, relative: str, *, tags: bool = False) -> Observed | None: ...


class BucketSide:
    """A target bucket/prefix through boto3."""

    has_metadata = True

    def __init__(self, client: Any, target: BucketTarget, hints: Hints, region: str, *, storage_class: bool = False) -> None:
        self.client = client
        self.target = target
        self.hints = hints
        self.region = region
        self.keeps_storage_class = storage_class  # the source's own endpoint: classes mean the same there
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
            if error_code(exc) != "NoSuchBucket":
                raise RestoreError(f"cannot look at {self.describe()}: {self._explain(exc)}") from exc
            self._bucket_exists = False
            return None
        except BotoCoreError as exc:
            raise RestoreError(f"cannot look at {self.describe()}: {self._explain(exc)}") from exc
        contents = page.get("Contents", [])
        return str(contents[0]["Key"]) if contents else None

    def creates(self) -> str | None:
        """What ``prepare`` will create (known after ``first_item``): the bucket when it is missing."""
        return None if self._bucket_exists else f"bucket '{self.target.bucket}'"

    def _explain(self, exc: ClientError | BotoCoreError) -> str:
        return explain(exc, endpoint=self.target.endpoint_url or "AWS S3", bucket=self.target.bucket, hints=self.hints)

    def unfinished(self) -> str | None:
        """Nothing to tell: each object is written whole or not at all (an aborted upload is no object)."""
        return None

    def writing(self, snapshot: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

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
        arguments = put_arguments(entry.meta, storage_class=self.keeps_storage_class)
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

    def read(self, relative: str, *, tags: bool = False) -> Observed | None:
        """The object's bytes hashed, its metadata, the storage class (where it is kept) and, with
        ``tags``, its tags (GetObjectTagging); None if it is gone."""
        key = self.target.prefix + relative

        def fetch() -> Observed | None:
            try:
                found = tag_dict(self.client.get_object_tagging(Bucket=self.target.bucket, Key=key)) if tags else None
                response = self.client.get_object(Bucket=self.target.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in GONE_CODES:
                    return None
                raise
            size, sha256 = hash_stream(response["Body"])
            view = metadata_view(object_meta(self.target.bucket, key, response))
            storage_class = (response.get("StorageClass") or STANDARD) if self.keeps_storage_class else None
            return Observed(size, sha256, view, found, storage_class)

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


def put_arguments(meta: Mapping[str, Any], *, storage_class: bool = False) -> dict[str, Any]:
    """PUT (and CreateMultipartUpload) parameters that recreate an object's metadata and tags, and
    with ``storage_class`` its storage class."""
    arguments: dict[str, Any] = {api: meta[name] for name, api in META_FIELDS if meta.get(name)}
    if meta.get("metadata"):
        arguments["Metadata"] = dict(meta["metadata"])
    if meta.get("expires"):
        arguments["Expires"] = datetime.fromisoformat(meta["expires"])
    if meta.get("website_redirect_location"):
        arguments["WebsiteRedirectLocation"] = meta["website_redirect_location"]
    if meta.get("tags"):
        arguments["Tagging"] = tagging_header(meta["tags"])
    if storage_class and meta.get("storage_class") not in (None, STANDARD):
        arguments["StorageClass"] = meta["storage_class"]
    return arguments


PART_PREFIX, PART_SUFFIX = ".lifeboat-", ".part"  # an object's file while it is written
MARK_NAME = f".{MARK_SUFFIX}"  # in the target directory while a restore writes it


class DirectorySide:
    """A target directory: each object a file at ``key_to_path``, written atomically, never outside;
    marked (``MARK_NAME``) while a restore writes it."""

    has_metadata = False
    keeps_storage_class = False

    def __init__(self, target: DirectoryTarget) -> None:
        self.root = target.path
        self.target = target
        self.mark = RestoreMark(self.root / MARK_NAME)

    def describe(self) -> str:
        return str(self.root)

    def first_item(self) -> str | None:
        if not self.root.exists():
            return None
        if not self.root.is_dir():
            raise RestoreError(f"{self.root} exists and is not a directory")
        return next((entry.name for entry in self.root.iterdir() if entry.name != MARK_NAME), None)

    def creates(self) -> str | None:
        return None if self.root.exists() else f"directory {self.root}"

    def unfinished(self) -> str | None:
        return self.mark.earlier() if self.root.is_dir() else None

    @contextlib.contextmanager
    def writing(self, snapshot: str) -> Iterator[None]:
        """The directory is marked while the block restores into it; once it has succeeded, the part files
        of earlier restores that were killed are removed too. A failed restore keeps the mark: the
        directory holds part of the snapshot."""
        with self.mark.held(snapshot=snapshot, keep_on_failure=True):
            yield
            removed = remove_leftovers(self._part_files())
            if removed:
                log.info("s3.restore.leftovers_removed", target=self.describe(), files=removed)

    def _part_files(self) -> Iterator[Path]:
        for folder, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
                    yield Path(folder, name)

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RestoreError(f"cannot create {self.root}: {exc.strerror}") from exc

    def write(self, repository: Repository, entry: Entry, relative: str, snapshot: str) -> int:
        """Write one object's verified bytes to its file (temporary file, then rename into place)."""
        path = self.root / key_to_path(relative)
        parent = self._parent(path, relative)
        try:
            handle, temporary = tempfile.mkstemp(dir=parent, prefix=PART_PREFIX, suffix=PART_SUFFIX)
        except OSError as exc:
            raise cannot_write(path, exc) from exc
        try:
            os.fchmod(handle, 0o644)
            with os.fdopen(handle, "wb") as out:
                repository.restore_entry(entry, out, snapshot=snapshot)
            Path(temporary).replace(path)
        except IsADirectoryError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise RestoreError(self._clash(relative)) from exc
        except OSError as exc:  # a full disk, a read-only or vanished mount: the target's, named
            Path(temporary).unlink(missing_ok=True)
            raise cannot_write(path, exc) from exc
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

    def read(self, relative: str, *, tags: bool = False) -> Observed | None:
        try:
            with (self.root / key_to_path(relative)).open("rb") as stream:
                size, sha256 = hash_stream(stream)
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
        try:
            os.utime(path, (moment, moment))
        except OSError as exc:
            raise cannot_write(path, exc) from exc
