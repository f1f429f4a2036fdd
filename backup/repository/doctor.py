"""The repository's preflight (``lifeboat doctor``): reachable, credentials, list/put/get/delete with
a small probe object under ``doctor/`` that is removed afterwards, Object Lock and versioning against
the policy, clock skew against the server's ``Date``, and free space of a local repository."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from backup.doctor import DOCTOR_TIMEOUT, Concern, Finding, Problem, Status, probe
from policies.model import Repository as RepositorySettings
from policies.model import reveal

TARGET = "repository"
PROBE_PREFIX = "doctor/"
LOW_SPACE = 1024**3  # a local repository with less free space than this is a WARN
SKEW_WARN = 60.0  # seconds: retention dates and lock ages drift by as much
SKEW_FAIL = 15 * 60.0  # S3 refuses signed requests past 15 minutes (RequestTimeTooSkewed)
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
CREDENTIALS_FIX = "check repository.s3.access_key_id / secret_access_key and the bucket policy"


def doctor(settings: RepositorySettings) -> list[Finding]:
    """Every repository check; never raises."""
    if settings.scheme == "file":
        return _local(Path(settings.prefix))
    return _s3(settings)


# ---- a directory ------------------------------------------------------------------------------------


def _local(root: Path) -> list[Finding]:
    findings = [probe(TARGET, "directory", lambda: _local_directory(root))]
    if findings[0].status is Status.FAIL:
        return findings
    findings.append(probe(TARGET, "write, read, delete", lambda: _local_round_trip(root)))
    findings.append(probe(TARGET, "free space", lambda: _free_space(root)))
    return findings


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _local_directory(root: Path) -> str:
    if root.is_dir():
        return f"{root} exists" + (" and holds a repository" if (root / "config.json").exists() else " (no repository yet)")
    parent = _existing_parent(root)
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise Problem(f"{root} does not exist and {parent} is not writable", f"create {root} for the user running lifeboat")
    raise Concern(f"{root} does not exist yet", "run `lifeboat repo init`")


def _local_round_trip(root: Path) -> str:
    if not root.is_dir():
        raise Concern(f"{root} does not exist yet: nothing written", "run `lifeboat repo init`")
    probe_dir = root / PROBE_PREFIX.rstrip("/")
    probe_file = probe_dir / f"probe-{uuid.uuid4().hex}"
    created = not probe_dir.exists()
    try:
        probe_dir.mkdir(exist_ok=True)
        probe_file.write_bytes(b"lifeboat doctor")
        if probe_file.read_bytes() != b"lifeboat doctor":
            raise Problem(f"{probe_file} read back different bytes", "check the file system under the repository")
    except OSError as exc:
        raise Problem(
            f"cannot write in {root}: {exc.strerror or exc}", f"give the user running lifeboat write access to {root}"
        ) from None
    finally:
        probe_file.unlink(missing_ok=True)
        if created and probe_dir.exists():
            probe_dir.rmdir()
    return f"wrote, read and deleted a probe object in {root}"


def _free_space(root: Path) -> str:
    usage = shutil.disk_usage(_existing_parent(root))
    free = f"{usage.free / 1024**3:.1f} GiB free"
    if usage.free < LOW_SPACE:
        raise Concern(f"only {free} under {root}", "free space or move the repository before the first backup")
    return free


# ---- an S3 bucket -----------------------------------------------------------------------------------


def _s3(settings: RepositorySettings) -> list[Finding]:
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = settings.s3
    endpoint = str(s3.endpoint_url or "AWS S3")
    try:
        client = doctor_client(
            endpoint_url=str(s3.endpoint_url) if s3.endpoint_url else None,
            region=s3.region,
            access_key_id=reveal(s3.access_key_id),
            secret_access_key=reveal(s3.secret_access_key),
            addressing_style=s3.addressing_style,
        )
    except Exception as exc:  # noqa: BLE001 - a secret file that cannot be read, a malformed endpoint...
        return [Finding(TARGET, "credentials", Status.FAIL, str(exc), CREDENTIALS_FIX)]
    bucket = settings.bucket
    answers: dict[str, Any] = {}

    def reach() -> str:
        try:
            answers["head"] = client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = s3_code(exc)
            if code in _DENIED:
                raise Problem(
                    f"{endpoint} refused the credentials for bucket '{bucket}' ({code})", CREDENTIALS_FIX
                ) from None
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise Problem(
                    f"bucket '{bucket}' does not exist at {endpoint}", "create the bucket, or fix repository.url"
                ) from None
            raise Problem(f"{endpoint} answered {code} for bucket '{bucket}'", CREDENTIALS_FIX) from None
        except BotoCoreError as exc:
            raise Problem(f"{endpoint} is unreachable: {exc}", "check repository.s3.endpoint_url and the network") from None
        return f"bucket '{bucket}' at {endpoint} answers with these credentials"

    first = probe(TARGET, "reachable, credentials", reach)
    if first.status is Status.FAIL:
        return [first]
    prefix = settings.prefix
    return [
        first,
        probe(TARGET, "clock skew", lambda: _skew(answers["head"])),
        probe(TARGET, "list, put, get, delete", lambda: _round_trip(client, bucket, prefix), fix=CREDENTIALS_FIX),
        probe(TARGET, "object lock", lambda: _object_lock(client, settings)),
        probe(TARGET, "versioning", lambda: _versioning(client, settings)),
    ]


def doctor_client(
    *, endpoint_url: str | None, region: str, access_key_id: str | None, secret_access_key: str | None, addressing_style: str
) -> Any:
    """An S3 client with short timeouts and no retries, for checks."""
    from backup.repository.s3store import make_client

    return make_client(
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        addressing_style=addressing_style,
        connect_timeout=DOCTOR_TIMEOUT,
        read_timeout=DOCTOR_TIMEOUT,
    )


def s3_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _skew(answer: dict[str, Any]) -> str:
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        raise Concern("the server sent no Date header: clock skew not checked")
    skew = (datetime.now(UTC) - parsedate_to_datetime(date)).total_seconds()
    said = f"this machine's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server's"
    if abs(skew) >= SKEW_FAIL:
        raise Problem(said + ": S3 refuses requests signed 15 minutes off", "synchronise this machine's clock (NTP)")
    if abs(skew) >= SKEW_WARN:
        raise Concern(said, "synchronise this machine's clock (NTP)")
    return said


def _round_trip(client: Any, bucket: str, prefix: str) -> str:
    key = f"{prefix}/{PROBE_PREFIX}probe-{uuid.uuid4().hex}" if prefix else f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}"
    steps = []
    client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    steps.append("list")
    put = client.put_object(Bucket=bucket, Key=key, Body=b"lifeboat doctor")
    steps.append("put")
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if body != b"lifeboat doctor":
            raise Problem(f"s3://{bucket}/{key} read back different bytes", "check the S3 server")
        steps.append("get")
    finally:
        version = put.get("VersionId")
        extra = {"VersionId": version} if version and version != "null" else {}
        try:
            client.delete_object(Bucket=bucket, Key=key, **extra)
        except Exception as exc:  # noqa: BLE001 - said as the finding
            raise Problem(
                f"{', '.join(steps)} allowed, but the probe s3://{bucket}/{key} could not be deleted: {exc}",
                "allow s3:DeleteObject (and s3:DeleteObjectVersion) to the repository's key; remove the probe by hand",
            ) from None
    return f"listed, wrote, read and deleted a probe object under s3://{bucket}/{prefix}"


def _object_lock(client: Any, settings: RepositorySettings) -> str:
    from botocore.exceptions import ClientError

    wanted = settings.object_lock
    try:
        configuration = client.get_object_lock_configuration(Bucket=settings.bucket).get("ObjectLockConfiguration", {})
        enabled = configuration.get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        code = s3_code(exc)
        if code not in ("ObjectLockConfigurationNotFoundError", "InvalidRequest", "NotImplemented", "404"):
            raise Problem(f"cannot read the bucket's Object Lock configuration: {code}", CREDENTIALS_FIX) from None
        enabled = False
    if wanted is None:
        return "enabled on the bucket (not used by the policy)" if enabled else "not asked for by the policy"
    if not enabled:
        raise Problem(
            f"the policy asks for Object Lock ({wanted.mode}, {wanted.days} days) but bucket '{settings.bucket}' has none",
            "create the bucket with Object Lock enabled (not every server can turn it on later), "
            "or remove repository.object_lock",
        )
    return f"enabled on the bucket; objects written with {wanted.mode} retention for {wanted.days} days"


def _versioning(client: Any, settings: RepositorySettings) -> str:
    status = client.get_bucket_versioning(Bucket=settings.bucket).get("Status") or "never enabled"
    if settings.object_lock is not None and status != "Enabled":
        raise Problem(f"versioning is {status}; Object Lock needs it enabled", "enable versioning on the bucket")
    return f"versioning: {status}"
