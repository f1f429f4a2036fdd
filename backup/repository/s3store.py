"""S3Store: a repository in an S3 bucket/prefix (MinIO, AWS, Ceph...), through boto3.

botocore's own retries are switched off: the repository retries ``TransientStoreError`` with one
declared policy (retry.py), and this module decides what is transient. Permanent errors say what to
fix. With Object Lock configured, every object but a lock file is written with its retention and the
SHA-256 checksum S3 requires for it. In a versioned bucket (always so with Object Lock) a delete
removes every version, oldest first, and a version still under retention raises ObjectLockedError
(prune skips it and says so).
"""

from __future__ import annotations

import builtins
import contextlib
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError

from backup.repository.store import ObjectInfo, ObjectLockedError, ObjectNotFound, TransientStoreError
from policies.errors import StoreError
from policies.model import ObjectLock, Repository, reveal

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
# A HEAD answer has no body, so a missing bucket comes back as a bare "404" there.
_NO_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}
# Lock files are rewritten and removed all the time, and a tombstone (repository.py) must go with its
# manifest once that one's retention ends: neither carries retention.
UNLOCKED_PREFIXES = ("locks/", "forgotten/")
OBJECT_LOCK_FIX = (
    "create the bucket with Object Lock enabled (aws s3api create-bucket --bucket {bucket} "
    "--object-lock-enabled-for-bucket; it cannot be switched on for an existing bucket everywhere), "
    "or remove object_lock from the repository in the policy"
)


def bucket_object_lock(client: Any, bucket: str) -> bool | None:
    """Whether ``bucket`` has Object Lock enabled, asked with GetObjectLockConfiguration.

    True or False; None when the answer says nothing (not allowed to ask, or an error that is not
    about Object Lock). A missing bucket, or an unreachable server, raises the botocore error.
    AWS, moto and Ceph RGW all answer ``ObjectLockConfigurationNotFoundError`` for a bucket without it
    (where a locked write on RGW gets a bare ``InvalidRequest`` with no message).
    """
    try:
        answer = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) == "ObjectLockConfigurationNotFoundError":
            return False
        if _code(exc) == "NoSuchBucket":
            raise
        return None
    return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


class S3Store:
    """Objects under ``s3://bucket/prefix``. Keys passed in are relative to the prefix."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = 64 * 1024 * 1024,
        object_lock: ObjectLock | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.object_lock = object_lock
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._endpoint = client.meta.endpoint_url
        self._bucket_seen = False  # set once the bucket is known to exist (see exists())
        self._versioned: bool | None = None  # whether deletes must remove versions; asked once

    @classmethod
    def from_settings(cls, settings: Repository) -> S3Store:
        s3 = settings.s3
        client = make_client(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=reveal(s3.access_key_id),
            secret_access_key=reveal(s3.secret_access_key),
            addressing_style=s3.addressing_style,
        )
        return cls(client, settings.bucket, settings.prefix, part_size=s3.part_size, object_lock=settings.object_lock)

    def require_object_lock(self) -> None:
        """Raise StoreError saying what to fix if Object Lock is configured but the bucket lacks it.

        Asked before a repository is created, so that nothing is written to a bucket that would
        refuse (or, on a server that ignores the lock headers, silently not keep) the retention."""
        if self.object_lock is None:
            return
        try:
            enabled = bucket_object_lock(self.client, self.bucket)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "ask the Object Lock configuration of", "")
        if enabled is False:
            raise self._no_object_lock()

    def _no_object_lock(self) -> StoreError:
        return StoreError(
            f"bucket '{self.bucket}' at {self._endpoint} has no Object Lock enabled, but repository.object_lock "
            f"asks for {self.object_lock.mode if self.object_lock else ''} retention: "
            + OBJECT_LOCK_FIX.format(bucket=self.bucket)
        )

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _lock_args(self, key: str) -> dict[str, Any]:
        if self.object_lock is None or key.startswith(UNLOCKED_PREFIXES):
            return {}
        until = datetime.now(UTC) + timedelta(days=self.object_lock.days)
        return {
            "ObjectLockMode": self.object_lock.mode,
            "ObjectLockRetainUntilDate": until,
            "ChecksumAlgorithm": "SHA256",
        }

    def put(self, key: str, stream: BinaryIO) -> None:
        full = self._full(key)
        first = read_full(stream, self.part_size)
        try:
            if len(first) < self.part_size:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=first, **self._lock_args(key))
            else:
                self._put_multipart(key, full, first, stream)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "write", key)

    def _put_multipart(self, key: str, full: str, first: bytes, stream: BinaryIO) -> None:
        lock_args = self._lock_args(key)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **lock_args)
        upload_id = upload["UploadId"]
        checksum = {"ChecksumAlgorithm": "SHA256"} if lock_args else {}
        parts = []
        try:
            part, number = first, 1
            while part:
                done = self.client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=part, **checksum
                )
                parts.append({"PartNumber": number, "ETag": done["ETag"], **_part_checksum(done)})
                part, number = read_full(stream, self.part_size), number + 1
            completed = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        if lock_args:
            self._ensure_retention(full, completed.get("VersionId"), lock_args)

    def _ensure_retention(self, full: str, version_id: str | None, lock_args: dict[str, Any]) -> None:
        """Give a completed multipart object its retention if the server dropped it.

        Some S3 servers (moto 5.2 among them) ignore the lock headers of CreateMultipartUpload and
        complete the object unprotected; one HEAD per (large, rare) multipart object finds that out.
        """
        version = {"VersionId": version_id} if version_id else {}
        if self.client.head_object(Bucket=self.bucket, Key=full, **version).get("ObjectLockMode"):
            return
        retention = {"Mode": lock_args["ObjectLockMode"], "RetainUntilDate": lock_args["ObjectLockRetainUntilDate"]}
        self.client.put_object_retention(Bucket=self.bucket, Key=full, Retention=retention, **version)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "read", key)
        try:
            yield _Body(body, self, key)  # type: ignore[misc]
        finally:
            body.close()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._full(key), Range=f"bytes={offset}-{offset + length - 1}"
            )
        except ClientError as exc:
            if _code(exc) == "InvalidRange":
                return b""  # the object ends before ``offset``
            self._fail(exc, "read", key)
        except BotoCoreError as exc:
            self._fail(exc, "read", key)
        with contextlib.closing(response["Body"]) as body:
            return _Body(body, self, key).read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND_CODES:
                self._fail(exc, "look up", key)
            # A HEAD 404 is the same for a missing key and a missing bucket: answering False for a
            # missing bucket would make a misconfigured repository look empty, so check it once.
            self._require_bucket()
            return False
        except BotoCoreError as exc:
            self._fail(exc, "look up", key)
        self._bucket_seen = True
        return True

    def _require_bucket(self) -> None:
        """Raise the "no such bucket" StoreError unless the bucket exists (asked once per store)."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _NO_BUCKET_CODES:
                raise self._no_such_bucket() from exc
            self._fail(exc, "look up", "")
        except BotoCoreError as exc:
            self._fail(exc, "look up", "")
        self._bucket_seen = True

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        start = len(self.prefix) + 1 if self.prefix else 0
        after = {"StartAfter": self._full(start_after)} if start_after else {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._full(prefix), **after
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][start:], item["Size"], item["LastModified"].astimezone(UTC))
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "list", prefix)

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            if not self._bucket_is_versioned():
                self.client.delete_object(Bucket=self.bucket, Key=full)
                return
            for version_id in self._version_ids(full):
                self._delete_version(key, full, version_id)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "delete", key)

    def remove_incomplete(self, before: datetime) -> int:
        """Abort the multipart uploads under the prefix initiated before ``before`` (a writer killed
        between create and complete): S3 keeps, and bills, their parts until they are aborted."""
        removed = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].astimezone(UTC) < before:
                        key, upload_id = upload["Key"], upload["UploadId"]
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                        removed += 1
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc, "abort the unfinished uploads of", "")
        return removed

    def _bucket_is_versioned(self) -> bool:
        """Whether a delete must remove versions (a plain delete there only adds a delete marker)."""
        if self.object_lock is not None:
            return True  # Object Lock needs versioning
        if self._versioned is None:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            except ClientError as exc:
                if _code(exc) != "AccessDenied":
                    raise
                status = None  # not allowed to ask: delete as in an unversioned bucket, as before
            self._versioned = status in ("Enabled", "Suspended")
        return self._versioned

    def _version_ids(self, full: str) -> Sequence[str]:
        """The versions of exactly ``full``, oldest first, then its delete markers.

        S3 lists a key's versions newest first. Deleting from the oldest up means that a delete
        stopped by a retained version leaves the newer versions, and so what readers see, as it was.
        """
        # (builtins.list: inside this class, a bare 'list' names S3Store.list)
        versions: builtins.list[str] = []
        markers: builtins.list[str] = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full):
            versions += [item["VersionId"] for item in page.get("Versions", []) if item["Key"] == full]
            markers += [item["VersionId"] for item in page.get("DeleteMarkers", []) if item["Key"] == full]
        return [*reversed(versions), *markers]

    def _delete_version(self, key: str, full: str, version_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
        except ClientError as exc:
            # A retained version is refused with a plain AccessDenied (moto: "Access Denied"; AWS adds
            # "because object protected by object lock"), the same code as a missing permission, so
            # ask the version itself before calling it locked.
            held = self._lock_holding(full, version_id, exc) if _code(exc) == "AccessDenied" else None
            if held is None:
                raise
            raise ObjectLockedError(f"{self.url}/{key} is under Object Lock ({held}): it can be deleted after that") from exc

    def _lock_holding(self, full: str, version_id: str, denied: ClientError) -> str | None:
        """What keeps a version from being deleted (legal hold, retention date), or None if nothing does."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, VersionId=version_id)
        except (ClientError, BotoCoreError):
            # Not allowed to read the lock state: trust only S3's own wording.
            return "retention" if "object lock" in str(denied).lower() else None
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return "legal hold"
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until > datetime.now(UTC):
            return f"{head.get('ObjectLockMode', 'retention')} retention until {until.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        return None

    def _fail(self, exc: Exception, what: str, key: str) -> NoReturn:
        """Translate a botocore error into the store errors; always raises."""
        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, SSLError):  # a certificate or http/https mix-up: retrying will not fix it
            raise StoreError(
                f"cannot {what} {where}: TLS with {self._endpoint} failed ({exc}): check repository.s3.endpoint_url "
                "(http or https) and the CA bundle"
            ) from exc
        if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
            raise TransientStoreError(f"cannot {what} {where}: {exc}") from exc
        if not isinstance(exc, ClientError):
            raise StoreError(f"cannot {what} {where}: {exc}") from exc
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            raise self._no_such_bucket() from exc
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFound(f"{where} not found") from exc
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientStoreError(f"cannot {what} {where}: {code} (HTTP {status})") from exc
        if code in _DENIED_CODES:
            raise StoreError(
                f"access denied to {where} ({code}): check repository.s3.access_key_id / secret_access_key "
                "and the bucket policy"
            ) from exc
        if code == "InvalidRequest" and self.object_lock is not None and self._lacks_object_lock(exc):
            raise StoreError(f"cannot {what} {where}: {self._no_object_lock()}") from exc
        raise StoreError(f"cannot {what} {where}: {code}: {exc}") from exc

    def _lacks_object_lock(self, exc: ClientError) -> bool:
        """Whether an InvalidRequest is the bucket's missing Object Lock: moto says so in its message,
        Ceph RGW sends no message at all, so then the bucket is asked."""
        if "objectlockconfiguration" in _message(exc).replace(" ", "").lower():
            return True
        try:
            return bucket_object_lock(self.client, self.bucket) is False
        except (ClientError, BotoCoreError):
            return False

    def _no_such_bucket(self) -> StoreError:
        return StoreError(f"bucket '{self.bucket}' does not exist at {self._endpoint}: create it, or fix repository.url")


class _Body(io.RawIOBase):
    """A get_object body whose read errors become store errors (a connection can drop mid-read)."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (what io.BufferedReader and friends call); 0 at the end."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except (ClientError, BotoCoreError) as exc:
            self._store._fail(exc, "read", self._key)
        except OSError as exc:  # urllib3 protocol errors are OSErrors
            raise TransientStoreError(f"reading {self._store.url}/{self._key} broke off: {exc}") from exc


def make_client(
    *,
    endpoint_url: str | None,
    region: str,
    access_key_id: str | None,
    secret_access_key: str | None,
    addressing_style: str = "path",
    max_pool: int = 32,
    connect_timeout: float = 10,
    read_timeout: float = 120,
) -> Any:
    """A boto3 S3 client without botocore retries (the caller's retry policy decides)."""
    config = Config(
        region_name=region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool,
        s3={"addressing_style": addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of ``stream``.

    One read() may return less than asked (pipes, sockets, raw streams) without being the end;
    taking a short read for the end would store a truncated object as if it were whole.
    """
    blocks: list[bytes] = []
    wanted = size
    while wanted > 0:
        block = stream.read(wanted)
        if not block:
            break
        blocks.append(block)
        wanted -= len(block)
    return b"".join(blocks)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _part_checksum(done: dict[str, Any]) -> dict[str, Any]:
    return {"ChecksumSHA256": done["ChecksumSHA256"]} if "ChecksumSHA256" in done else {}
