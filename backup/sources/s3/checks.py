"""The drill checks of S3 sources: an object that must exist or hold the bytes it held at backup
time (its SHA-256, already in the snapshot's entry), or a prefix with a minimum of objects or bytes.

A bucket/key of the source is found in a restored copy where the restore put it (``View``: under
``<bucket>/`` when the snapshot holds several buckets), so a check names objects as the team knows them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from backup.repository.manifest import SnapshotHeader
from backup.repository.repository import Repository
from backup.sources.base import Observation, Source
from backup.sources.s3.targets import BucketTarget, S3Target, TargetSide, View
from policies.errors import SourceError
from policies.model import ReferenceFrom, S3Check, S3Settings


class S3Checks:
    captures_at_backup: ClassVar[bool] = False  # an object's SHA-256 is in its snapshot entry

    def on_source(self, source: Source, check: S3Check) -> Observation:
        settings: S3Settings = source.settings  # type: ignore[attr-defined]
        side = _side(source, BucketTarget(settings.endpoint_url, check.bucket))
        return _observe(side, check, check.key)

    def on_copy(self, source: Source, header: SnapshotHeader, target: Any, check: S3Check) -> Observation:
        view = View.of(header, target)
        if check.bucket not in view.buckets:
            raise SourceError(
                f"bucket '{check.bucket}' is not in snapshot {header.id} (it holds: {', '.join(view.buckets)})"
            )
        relative = f"{check.bucket}/{check.key}" if view.bucket_segment else check.key
        return _observe(_side(source, target), check, relative)

    def reference_values(self, source: Source, header: SnapshotHeader, target: Any, origin: ReferenceFrom) -> list[str]:
        """``s3://bucket/key`` of every object under ``origin.prefix`` (``bucket/prefix``) in the copy."""
        view = View.of(header, target)
        bucket, _, key_prefix = str(origin.prefix).partition("/")
        if bucket not in view.buckets:
            raise SourceError(f"bucket '{bucket}' is not in snapshot {header.id} (it holds: {', '.join(view.buckets)})")
        relative = f"{bucket}/{key_prefix}" if view.bucket_segment else key_prefix
        names = (view.origin(name) for name, _ in _side(source, target).scan() if name.startswith(relative))
        return [f"s3://{found_bucket}/{key}" for found_bucket, key in names if found_bucket == bucket]

    def missing_references(self, source: Source, header: SnapshotHeader, target: Any, values: list[str]) -> list[str]:
        """Values naming an object (``s3://bucket/key``, ``bucket/key``) the copy does not hold, or a
        bucket (a bare name) its snapshot does not hold."""
        view = View.of(header, target)
        objects = {"/".join(view.origin(name)) for name, _ in _side(source, target).scan()}
        missing = []
        for value in values:
            path = value.removeprefix("s3://")
            if ("/" in path.strip("/") and path not in objects) or (
                "/" not in path.strip("/") and path.strip("/") not in view.buckets
            ):
                missing.append(value)
        return missing

    def captured(self, header: SnapshotHeader, repository: Repository, check: S3Check) -> Observation | None:
        for entry in repository.entries(header):
            if entry.meta.get("bucket") == check.bucket and entry.meta.get("key") == check.key:
                return Observation(entry.sha256, 1, f"SHA-256 {entry.sha256[:16]}…", entry.size)
        raise SourceError(f"snapshot {header.id} holds no object {check.object}: nothing to compare with")


def _side(source: Source, target: S3Target) -> TargetSide:
    return source._side(target)  # type: ignore[attr-defined]


def _observe(side: TargetSide, check: S3Check, relative: str) -> Observation:
    if check.object is not None:
        found = side.read(relative)
        if found is None:
            return Observation(None, 0, f"object {check.object} absent")
        return Observation(found.sha256, 1, f"SHA-256 {found.sha256[:16]}…", found.size)
    count = size = 0
    for name, object_size in side.scan():
        if name.startswith(relative):
            count += 1
            size += object_size
    return Observation(count, count, f"{count} object(s), {size} bytes under {check.prefix}", size)
