"""S3's preflight (``lifeboat doctor``): each bucket listed and its first object read, and its
versioning state (a versioned source bucket keeps what a restore overwrites as old versions)."""

from __future__ import annotations

from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup.doctor import Concern, Finding, Problem, Status, probe
from backup.repository.doctor import doctor_client
from backup.sources.s3.calls import Hints, explain
from policies.model import Repository as RepositorySettings
from policies.model import S3Settings, reveal


def doctor(name: str, settings: S3Settings, *, repository: RepositorySettings) -> list[Finding]:
    """Every check of S3 source ``name``; never raises."""
    target = f"source {name}"
    endpoint = str(settings.endpoint_url or "AWS S3")
    hints = Hints(
        endpoint=f"sources.{name}.endpoint_url",
        credentials=f"sources.{name}.access_key_id / secret_access_key",
        bucket=f"sources.{name}.buckets",
    )
    try:
        client = doctor_client(
            endpoint_url=str(settings.endpoint_url) if settings.endpoint_url else None,
            region=settings.region,
            access_key_id=reveal(settings.access_key_id),
            secret_access_key=reveal(settings.secret_access_key),
            addressing_style=settings.addressing_style,
        )
    except Exception as exc:  # noqa: BLE001 - a secret file that cannot be read...
        return [Finding(target, "credentials", Status.FAIL, str(exc), f"check {hints.credentials}")]
    findings = []
    for bucket in sorted(set(settings.buckets)):
        read = probe(target, f"list, read {bucket}", partial(_read, client, bucket, endpoint, hints))
        findings.append(read)
        if read.status is not Status.FAIL:
            findings.append(probe(target, f"versioning {bucket}", partial(_versioning, client, bucket)))
    return findings


def _read(client: Any, bucket: str, endpoint: str, hints: Hints) -> str:
    try:
        listed = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
        if not listed:
            return "listed: the bucket is empty"
        key = listed[0]["Key"]
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        reason = explain(exc, endpoint=endpoint, bucket=bucket, hints=hints)
        raise Problem(reason, f"allow s3:ListBucket and s3:GetObject on '{bucket}'; check {hints.credentials}") from None
    return f"listed and read '{key}'"


def _versioning(client: Any, bucket: str) -> str:
    try:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status") or "never enabled"
    except ClientError as exc:
        raise Concern(f"versioning not readable: {exc}", f"allow s3:GetBucketVersioning on '{bucket}'") from None
    return f"versioning: {status}"
