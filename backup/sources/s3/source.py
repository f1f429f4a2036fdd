"""The ``S3Source`` the registry names: a snapshot of the configured buckets (listing merged with the
previous snapshot, downloads in parallel, entries in key order), restore into a bucket or a
directory, and verify. The package's docstring (backup/sources/s3/__init__.py) says what each does."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar, cast
from urllib.parse import urlparse

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter
from backup.repository.s3store import make_client
from backup.sources.base import Progress, RestoreOptions, RestoreResult, SnapshotOutcome, Verdict, Verification, flag_of
from backup.sources.s3.calls import GONE_CODES, Hints, call_with_retry, error_code, explain, run_bounded
from backup.sources.s3.digest import BucketSum, Skipped, SnapshotTally, object_meta, tag_dict
from backup.sources.s3.kind import KIND
from backup.sources.s3.listing import Listed, PreviousEntries, list_bucket, normalize_etag, reusable
from backup.sources.s3.targets import (
    BucketSide,
    BucketTarget,
    DirectorySide,
    DirectoryTarget,
    S3Target,
    TargetSide,
    View,
    same_endpoint,
)
from backup.sources.s3.verify import verify_entries, verify_fingerprint
from policies.errors import LifeboatError, RestoreError, RestoreUsageError, SourceError
from policies.model import S3Settings, reveal
from policies.sizes import human_bytes

log = structlog.get_logger(__name__)
T = TypeVar("T")

_NO_TAGGING_CODES = {"NotImplemented", "XNotImplemented"}  # an endpoint without object tagging
WINDOW_PER_WORKER = 8  # snapshot: objects queued per worker ahead of the in-order writer (entries, not bytes)
_TARGET_USAGE = "use --to-bucket B [--to-endpoint URL] [--to-prefix P], or --to-dir DIR; optionally --prefix P"


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
        self._untagged_logged = False

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

    def census(self) -> dict[str, Any]:
        """Objects and bytes per configured bucket now, from the same listing a snapshot makes
        (include / exclude applied); no object is read. Raises SourceError."""
        client = self._client(self.settings.endpoint_url)
        buckets = sorted(set(self.settings.buckets))
        counted = {bucket: {"objects": 0, "bytes": 0} for bucket in buckets}
        for listed in self._listing(client, buckets):
            counted[listed.bucket]["objects"] += 1
            counted[listed.bucket]["bytes"] += listed.size
        totals = {what: sum(bucket[what] for bucket in counted.values()) for what in ("objects", "bytes")}
        return {"totals": totals, "buckets": counted}

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
        window: deque[Future[Entry | Reused | Skipped]] = deque()
        try:
            for listed in listing:
                tally.listed += 1
                old = before.take(listed.bucket, listed.key)
                tally.compare(old, listed)
                if old is not None and reusable(old, listed, writer.sink):
                    window.append(pool.submit(self._refresh, client, writer, old, listed, progress))
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
                if error_code(exc) in GONE_CODES:
                    return Skipped(listed.bucket, listed.key)
                raise
            body = response["Body"]
            try:
                stored = writer.write_stream(cast(BinaryIO, body), progress=progress)
            finally:
                body.close()
            meta = object_meta(listed.bucket, listed.key, response)
            return Entry(f"{listed.bucket}/{listed.key}", stored.size, stored.sha256, stored.chunks, meta)

        read = self._call(attempt, bucket=listed.bucket, what=f"read s3://{listed.bucket}/{listed.key}")
        if isinstance(read, Skipped):
            return read
        return self._with_tags(client, read, listed)

    def _refresh(
        self, client: Any, writer: SnapshotWriter, old: Entry, listed: Listed, progress: Progress | None
    ) -> Entry | Reused | Skipped:
        """The previous entry of an unchanged object, with its tags read again (and, for an entry
        written before attributes were kept, its metadata from a HEAD): its chunks are reused."""
        meta = dict(old.meta)
        if "storage_class" not in old.meta:  # written before issue 13: no Expires, redirect, tags
            head = self._head(client, listed)
            if head is None:
                return Skipped(listed.bucket, listed.key)
            if normalize_etag(str(head.get("ETag", ""))) != listed.etag or head.get("ContentLength") != listed.size:
                return self._download(client, writer, listed, progress)  # changed since the listing
            meta = object_meta(listed.bucket, listed.key, head)
        entry = self._with_tags(client, Entry(old.name, old.size, old.sha256, old.chunks, meta), listed)
        if isinstance(entry, Skipped):
            return entry
        retagged = "tags" in old.meta and "tags" in entry.meta and old.meta["tags"] != entry.meta["tags"]
        return Reused(entry, retagged)

    def _head(self, client: Any, listed: Listed) -> dict[str, Any] | None:
        def attempt() -> dict[str, Any] | None:
            try:
                return cast(dict[str, Any], client.head_object(Bucket=listed.bucket, Key=listed.key))
            except ClientError as exc:
                if error_code(exc) in GONE_CODES:
                    return None
                raise

        return self._call(attempt, bucket=listed.bucket, what=f"read the metadata of s3://{listed.bucket}/{listed.key}")

    def _with_tags(self, client: Any, entry: Entry, listed: Listed) -> Entry | Skipped:
        """``entry`` with the object's storage class (from the listing) and tags (GetObjectTagging, on
        every object: a tag changes neither ETag nor time); Skipped if the object is gone. An endpoint
        that has no tagging (NotImplemented) leaves the tags out: verification then says they were
        not covered. A refusal (AccessDenied) fails the snapshot like any failed read. With the
        source's ``tags: false`` they are not read at all, and likewise left out."""
        if not self.settings.tags:
            meta = {key: value for key, value in entry.meta.items() if key != "tags"}
            meta["storage_class"] = listed.storage_class
            return Entry(entry.name, entry.size, entry.sha256, entry.chunks, meta)

        def attempt() -> dict[str, str] | Skipped | None:
            try:
                return tag_dict(client.get_object_tagging(Bucket=listed.bucket, Key=listed.key))
            except ClientError as exc:
                if error_code(exc) in GONE_CODES:
                    return Skipped(listed.bucket, listed.key)
                if error_code(exc) in _NO_TAGGING_CODES:
                    return None
                raise

        what = f"read the tags of s3://{listed.bucket}/{listed.key} (s3:GetObjectTagging)"
        tags = self._call(attempt, bucket=listed.bucket, what=what)
        if isinstance(tags, Skipped):
            return tags
        meta = {key: value for key, value in entry.meta.items() if key != "tags"}
        meta["storage_class"] = listed.storage_class
        if tags is None:
            if not self._untagged_logged:
                self._untagged_logged = True
                log.warning("s3.tags_not_supported", source=self.name, endpoint=self.endpoint, effect="tags not kept")
        else:
            meta["tags"] = tags
        return Entry(entry.name, entry.size, entry.sha256, entry.chunks, meta)

    # ---- restore ------------------------------------------------------------------------------

    def parse_target(self, options: RestoreOptions) -> S3Target:
        """A BucketTarget or DirectoryTarget from the S3 options; RestoreError for options of other
        kinds, a missing or doubled target, or the source bucket itself without --in-place."""
        foreign = options.foreign(KIND.target_options)
        if foreign:
            named = ", ".join(map(flag_of, foreign))
            raise RestoreUsageError(f"{named}: not an option for s3 source '{self.name}'; {_TARGET_USAGE}")
        select = options.get("prefix") or ""
        if options.get("to_dir"):
            if options.given("to_endpoint", "to_bucket", "to_prefix", "in_place"):
                raise RestoreUsageError(f"--to-dir cannot be combined with a bucket target; {_TARGET_USAGE}")
            return DirectoryTarget(Path(options.get("to_dir")).absolute(), select=select)
        if not options.get("to_bucket"):
            raise RestoreUsageError(f"no restore target given for s3 source '{self.name}'; {_TARGET_USAGE}")
        bucket = str(options.get("to_bucket"))
        endpoint = self._target_endpoint(options.get("to_endpoint"))
        prefix = options.get("to_prefix") or ""
        in_place = same_endpoint(endpoint, self.settings.endpoint_url) and bucket in self.settings.buckets
        if in_place and not options.get("in_place"):
            raise RestoreError(
                f"s3://{bucket} at {endpoint or 'AWS S3'} is a bucket of source '{self.name}' itself: "
                "writing over it needs --in-place --yes; to restore beside it, choose another --to-bucket"
            )
        if options.get("in_place") and not in_place:
            raise RestoreUsageError(f"--in-place: s3://{bucket} at {endpoint} is not a bucket of source '{self.name}'")
        return BucketTarget(
            endpoint_url=endpoint,
            bucket=bucket,
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
            raise RestoreUsageError(f"--to-endpoint '{given}' is not an http(s) URL like http://minio:9000")
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
        # A storage class names something only at its own endpoint (another may not know GLACIER, or
        # call its classes otherwise): it is restored and compared there, recorded everywhere.
        here = same_endpoint(target.endpoint_url, self.settings.endpoint_url)
        return BucketSide(self._client(target.endpoint_url, keys), target, hints, self.settings.region, storage_class=here)

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
        plan = _plan(target, view, occupied, yes=options.yes, creates=side.creates())
        earlier = side.unfinished()
        if earlier:
            plan.append(f"{earlier}: what it left is replaced, its part files removed")
        if options.dry_run:
            count, size = _count(repository, header, view)
            plan.insert(0, f"would restore {count} objects ({human_bytes(size)}) of snapshot {header.id}")
            return self._result(header, side, started, True, count, size, plan)
        if isinstance(target, BucketTarget) and target.in_place and not options.yes:
            raise RestoreError(f"{side.describe()} is the source bucket itself: writing over it needs --in-place --yes")
        if occupied is not None and not options.yes:
            raise RestoreError(
                f"{side.describe()} is not empty (it holds '{occupied}'): add --yes to write into it "
                "(objects of the same name are replaced)" + (f"; {earlier}" if earlier else "")
            )
        if earlier:
            log.warning("s3.restore.earlier_unfinished", source=self.name, target=side.describe(), earlier=earlier)
        side.prepare()
        with side.writing(header.id):
            count, size = self._restore_objects(repository, header, side, view, progress)
        plan.insert(0, f"restored {count} objects ({human_bytes(size)}) of snapshot {header.id}, each verified (SHA-256)")
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
                return verify_fingerprint(header, side, view, parallel=self.settings.parallel)
            return verify_entries(repository, header, side, view, share=share, parallel=self.settings.parallel)
        except (LifeboatError, ClientError, BotoCoreError, OSError) as exc:
            return Verification(
                Verdict.UNVERIFIED, f"could not verify {target.describe()} against snapshot {header.id}: {exc}"
            )


def _plan(target: S3Target, view: View, occupied: str | None, *, yes: bool, creates: str | None) -> list[str]:
    """What a restore into ``target`` does, in lines for the operator (and the --dry-run plan): what it
    creates, and whether the real run would be refused (a non-empty target or the source bucket without --yes)."""
    lines: list[str] = []
    if isinstance(target, BucketTarget) or view.bucket_segment:
        lines.append(view.naming())
    if view.select:
        lines.append(f"only keys starting with '{view.select}'")
    if isinstance(target, BucketTarget):
        lines.append(
            "metadata restored: Content-Type, Content-Encoding, Cache-Control, Content-Disposition, "
            "Content-Language, user metadata, Expires, website redirect, tags; the storage class only "
            "at the source's own endpoint"
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
            if not yes:
                lines.append("the real run would be refused: writing over the source bucket needs --in-place --yes")
    else:
        lines.append("keys become paths by key_to_path ('%' escapes; empty, '.' and '..' segments escaped)")
        lines.append("a directory keeps bytes only: no Content-Type or user metadata")
    if creates is not None:
        lines.append(f"{creates} does not exist yet: the restore creates it")
    if occupied is not None and not yes:
        lines.append(f"the real run would be refused: the target is not empty (holds '{occupied}'); add --yes")
    elif occupied is not None:
        lines.append(f"the target is not empty (holds '{occupied}'): objects of the same name are replaced (--yes)")
    return lines


def _given_keys(options: RestoreOptions) -> tuple[str, str] | None:
    """The target's own access key from the options (drills pass their scratch server's), if any."""
    if options.get("to_access_key_id") is None and options.get("to_secret_access_key") is None:
        return None
    if not options.get("to_access_key_id") or not options.get("to_secret_access_key"):
        raise RestoreUsageError("give both the target's access key id and its secret access key, or neither")
    return options.get("to_access_key_id"), options.get("to_secret_access_key")


def _count(repository: Repository, header: SnapshotHeader, view: View) -> tuple[int, int]:
    count = size = 0
    for entry in repository.entries(header):
        if view.relative(entry) is not None:
            count += 1
            size += entry.size
    return count, size


@dataclass(frozen=True)
class Reused:
    """A previous entry taken over (its chunks), with the object's tags as read now."""

    entry: Entry
    retagged: bool


def _settle(
    window: deque[Future[Entry | Reused | Skipped]], writer: SnapshotWriter, tally: SnapshotTally, *, keep: int
) -> None:
    """Hand finished items at the head of ``window`` to the writer, in order; block on the head while
    more than ``keep`` items wait (the bound on memory and on how far listing runs ahead)."""
    while window:
        head = window[0]
        if len(window) <= keep and not head.done():
            return
        window.popleft()
        done = head.result()
        if isinstance(done, Reused):
            tally.reused += 1
            tally.retagged += done.retagged
            result: Entry | Skipped = done.entry
        else:
            result = done
            if isinstance(result, Entry):
                tally.downloaded += 1
        if isinstance(result, Skipped):
            log.warning("s3.object_vanished", bucket=result.bucket, key=result.key, effect="skipped")
            tally.skipped.append(result)
            continue
        writer.add(result)
        tally.record(result)
