"""The store contract, run over every store through one fixture, then what only one store promises.

The S3 store talks to the session's real moto server (no mocks); the contract, multipart and Object
Lock tests run on Ceph's RADOS Gateway too (``on_both_s3_servers``). Findings about moto 5.2 that
shape these tests:

* moto checks no credentials until its auth is switched on (``POST /moto-api/reset-auth`` with
  the number of requests to let through first); then an unknown key id gets ``InvalidAccessKeyId``
  and a wrong secret ``SignatureDoesNotMatch`` (a HEAD gets a bare ``403``), both HTTP 403.
* Deleting a version under retention gets ``AccessDenied`` / "Access Denied", word for word what a
  missing permission gets, so S3Store asks the version for its lock state before saying "locked".
* GetObjectRetention is not implemented by moto's server (it answers with the object's bytes), so
  retention is checked through HEAD's ``x-amz-object-lock-*`` headers.
* ListMultipartUploads gives every upload the same ``Initiated`` time, 2010-11-10T20:48:33Z.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import on_both_s3_servers

from backup.execute import free_port
from backup.repository.retry import RetryingStore, RetryPolicy
from backup.repository.s3store import S3Store, make_client
from backup.repository.store import (
    LocalStore,
    ObjectInfo,
    ObjectLockedError,
    ObjectNotFound,
    Store,
    TransientStoreError,
    get_bytes,
    put_bytes,
)
from policies.errors import StoreError
from policies.model import ObjectLock

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PART_SIZE = 5 * MiB  # S3's smallest part
PREFIX = "repo/x"
LOCK = ObjectLock(mode="GOVERNANCE", days=1)


# --- helpers ---------------------------------------------------------------------------------------


def s3_store(endpoint_url: str, bucket: str, *, key_id: str = "testing", secret: str = "testing", **options: Any) -> S3Store:
    """An S3Store the way Lifeboat builds one (make_client: no botocore retries)."""
    client = make_client(endpoint_url=endpoint_url, region="us-east-1", access_key_id=key_id, secret_access_key=secret)
    return S3Store(client, bucket, PREFIX, **options)


class BrokenStream(io.RawIOBase):
    """Gives ``good`` bytes, then fails the way a dying source does."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._good.read(size)
        if not data:
            raise RuntimeError("the source went away")
        return data


def listing(store: Store, prefix: str = "") -> dict[str, int]:
    """key -> size of what ``store.list(prefix)`` yields."""
    return {info.key: info.size for info in store.list(prefix)}


def head(store: S3Store, key: str) -> dict[str, Any]:
    """The raw HEAD answer for ``key`` (ETag, lock headers...)."""
    answer: dict[str, Any] = store.client.head_object(Bucket=store.bucket, Key=f"{PREFIX}/{key}")
    return answer


# --- the contract, over every store ------------------------------------------------------------------


@pytest.fixture(params=["local", "moto", "rgw"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store, empty; the S3 ones (on moto and on Ceph RGW) under a prefix of a fresh bucket, so keys
    outside it exist nowhere."""
    if request.param == "local":
        return LocalStore(tmp_path / "repo")
    endpoint = request.getfixturevalue(f"{request.param}_server")
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    endpoint.client().create_bucket(Bucket=bucket)
    return s3_store(endpoint.endpoint_url, bucket)


def test_put_then_open_gives_back_the_same_bytes(store: Store) -> None:
    data = os.urandom(300_000) + b"\x00\xff tail"
    put_bytes(store, "chunks/ab/abcdef", data)

    assert get_bytes(store, "chunks/ab/abcdef") == data


def test_open_streams_in_pieces_with_read_and_readinto(store: Store) -> None:
    data = os.urandom(200_000)
    put_bytes(store, "chunks/ab/streamed", data)

    with store.open("chunks/ab/streamed") as stream:
        pieces = list(iter(lambda: stream.read(65536), b""))
    with store.open("chunks/ab/streamed") as stream:
        buffer, filled = bytearray(len(data) + 10), 0
        while count := stream.readinto(memoryview(buffer)[filled:]):
            filled += count

    assert b"".join(pieces) == data
    assert bytes(buffer[:filled]) == data


def test_overwrite_replaces_the_whole_object(store: Store) -> None:
    put_bytes(store, "config.json", b"x" * 10_000)
    put_bytes(store, "config.json", b"short")

    assert get_bytes(store, "config.json") == b"short"
    assert listing(store) == {"config.json": 5}


def test_failed_overwrite_keeps_the_old_object(store: Store) -> None:
    put_bytes(store, "config.json", b"old and whole")

    with pytest.raises(RuntimeError, match="went away"):
        store.put("config.json", BrokenStream(b"new but never fin"))  # type: ignore[arg-type]

    assert get_bytes(store, "config.json") == b"old and whole"
    assert listing(store) == {"config.json": len(b"old and whole")}


def test_reader_opened_before_an_overwrite_reads_one_whole_version(store: Store) -> None:
    old, new = b"o" * 256 * 1024, b"n" * 256 * 1024
    put_bytes(store, "snapshots/src/a.json.zst", old)

    with store.open("snapshots/src/a.json.zst") as stream:
        head_bytes = stream.read(1000)
        put_bytes(store, "snapshots/src/a.json.zst", new)
        rest = stream.read()

    assert head_bytes + rest == old
    assert get_bytes(store, "snapshots/src/a.json.zst") == new


def test_open_of_a_missing_key_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound, match="chunks/00/missing"), store.open("chunks/00/missing"):
        pass


def test_get_range_reads_exactly_the_bytes_asked_for(store: Store) -> None:
    data = bytes(range(256)) * 64
    put_bytes(store, "packs/ab/pack", data)
    assert store.get_range("packs/ab/pack", 0, 10) == data[:10]
    assert store.get_range("packs/ab/pack", 1000, 3000) == data[1000:4000]
    assert store.get_range("packs/ab/pack", len(data) - 5, 100) == data[-5:]  # the object ends first: fewer
    assert store.get_range("packs/ab/pack", len(data) + 10, 5) == b""
    with pytest.raises(ObjectNotFound, match="packs/ab/missing"):
        store.get_range("packs/ab/missing", 0, 10)


def test_exists_tells_present_from_absent(store: Store) -> None:
    put_bytes(store, "chunks/ab/present", b"1")

    assert store.exists("chunks/ab/present")
    assert not store.exists("chunks/ab/absent")
    assert not store.exists("chunks/ab")  # a "directory" is no object


LAYOUT = {
    "config.json": 11,
    "chunks/a/1": 1,
    "chunks/ab/2": 2,
    "chunks/b/3": 3,
    "snap": 4,
    "snapshots/src/s1.json.zst": 5,
}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", set(LAYOUT)),
        ("chunks/", {"chunks/a/1", "chunks/ab/2", "chunks/b/3"}),
        ("chunks/a/", {"chunks/a/1"}),
        ("chunks/a", {"chunks/a/1", "chunks/ab/2"}),  # a prefix is a string prefix, as in S3
        ("snapshots/", {"snapshots/src/s1.json.zst"}),
        ("snap", {"snap", "snapshots/src/s1.json.zst"}),
        ("snapshots/src/s1", {"snapshots/src/s1.json.zst"}),
        ("nothing/", set()),
        ("chunks/c", set()),
    ],
)
def test_list_returns_exactly_the_keys_under_the_prefix(store: Store, prefix: str, expected: set[str]) -> None:
    for key, size in LAYOUT.items():
        put_bytes(store, key, b"z" * size)

    assert listing(store, prefix) == {key: LAYOUT[key] for key in expected}


ORDERING_KEYS = ["a-b", "a/b", "a/b/c", "a0", "chunks/ab/01", "chunks/ab/1", "chunks/ab-x", "chunks/b", "z", "\u00e9t\u00e9"]


def test_list_gives_keys_in_ascending_byte_order_and_goes_on_after_a_key(store: Store) -> None:
    """As S3 lists: what a listing that broke off needs to go on where it stopped."""
    for key in reversed(ORDERING_KEYS):
        if key != "a/b":  # a key cannot be a file and a directory at once in a local store
            put_bytes(store, key, b"x")
    expected = sorted((key for key in ORDERING_KEYS if key != "a/b"), key=str.encode)

    assert [info.key for info in store.list()] == expected
    assert [info.key for info in store.list(start_after="chunks/ab/1")] == expected[expected.index("chunks/ab/1") + 1 :]
    in_chunks = [info.key for info in store.list("chunks/", start_after="chunks/ab-x")]
    assert in_chunks == ["chunks/ab/01", "chunks/ab/1", "chunks/b"]
    assert [info.key for info in store.list(start_after="a/")] == expected[expected.index("a/b/c") :]


class FlakyListing:
    """A store whose listings break off with a transient error after ``every`` keys, ``times`` times."""

    def __init__(self, inner: Store, *, every: int, times: int) -> None:
        self.inner, self.url, self.every, self.left = inner, inner.url, every, times

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        for given, info in enumerate(self.inner.list(prefix, start_after=start_after), start=1):
            yield info
            if given == self.every and self.left:
                self.left -= 1
                raise TransientStoreError("connection reset by peer (injected)")


def test_a_retried_listing_goes_on_where_it_broke_off_without_holding_it(store: Store) -> None:
    keys = [f"chunks/{n:02x}/{n:04d}" for n in range(40)]
    for key in keys:
        put_bytes(store, key, b"x")
    flaky = FlakyListing(store, every=7, times=5)
    retrying = RetryingStore(flaky, RetryPolicy(attempts=2, base_delay=0), sleep=lambda _: None)  # type: ignore[arg-type]

    listed = retrying.list("chunks/")
    first = next(listed)
    assert first.key == keys[0]  # streamed: the first key comes before the listing is whole
    assert [first.key, *(info.key for info in listed)] == keys  # no key twice, none missing
    assert flaky.left == 0  # it broke off 5 times, each retried once: attempts count since the last key


def test_list_gives_timezone_aware_utc_modified_times(store: Store) -> None:
    put_bytes(store, "locks/one.json", b"{}")

    [info] = list(store.list("locks/"))

    assert isinstance(info, ObjectInfo)
    assert info.modified.utcoffset() == timedelta(0)
    # S3 keeps whole seconds; a test host's clock and moto's are the same clock.
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=1)


def test_delete_removes_and_a_missing_key_is_fine(store: Store) -> None:
    put_bytes(store, "chunks/ab/gone", b"bytes")
    put_bytes(store, "chunks/ab/kept", b"bytes")

    store.delete("chunks/ab/gone")
    store.delete("chunks/ab/gone")  # again: nothing to do, no error
    store.delete("chunks/ff/never-was")

    assert not store.exists("chunks/ab/gone")
    assert listing(store) == {"chunks/ab/kept": 5}


def test_zero_byte_object(store: Store) -> None:
    put_bytes(store, "locks/empty", b"")

    assert store.exists("locks/empty")
    assert get_bytes(store, "locks/empty") == b""
    assert listing(store, "locks/") == {"locks/empty": 0}


def test_unicode_and_spaces_in_keys(store: Store) -> None:
    key = "snapshots/ünïcode-源/état du 1er.json"
    put_bytes(store, key, "données".encode())

    assert get_bytes(store, key) == "données".encode()
    assert store.exists(key)
    assert listing(store, "snapshots/ünï") == {key: len("données".encode())}
    store.delete(key)
    assert listing(store) == {}


# --- LocalStore ----------------------------------------------------------------------------------------


def test_local_failed_put_leaves_no_object_and_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")

    with pytest.raises(RuntimeError):
        store.put("chunks/ab/half", BrokenStream(b"x" * 5000))  # type: ignore[arg-type]

    assert not store.exists("chunks/ab/half")
    assert listing(store) == {}
    assert [path for path in (tmp_path / "repo").rglob("*") if path.is_file()] == []


def test_local_put_makes_every_directory_it_creates_durable_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after a put must not lose the object with a directory it created (``chunks/ab/`` of
    a new prefix): each new directory's entry is fsynced in its parent, once, not at every put."""
    (tmp_path / "repo").mkdir()
    store = LocalStore(tmp_path / "repo")
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(str(Path(f"/proc/self/fd/{fd}").readlink())) or real_fsync(fd))
    put_bytes(store, "chunks/ab/first", b"1")
    directories = [path for path in synced if Path(path).is_dir()]
    assert sorted(directories) == sorted(str(tmp_path / "repo" / name) for name in ("", "chunks", "chunks/ab"))
    synced.clear()
    put_bytes(store, "chunks/ab/second", b"2")
    assert [path for path in synced if Path(path).is_dir()] == [str(tmp_path / "repo" / "chunks" / "ab")]


def test_local_list_hides_temp_files_a_crash_left_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    put_bytes(store, "chunks/ab/real", b"1")
    (tmp_path / "repo" / "chunks" / "ab" / ".tmp-k2j3h4").write_bytes(b"half a chunk")

    assert listing(store) == {"chunks/ab/real": 1}


def test_local_removes_only_the_old_temp_files_of_unfinished_writes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    put_bytes(store, "chunks/ab/real", b"1")
    old = tmp_path / "repo" / "chunks" / "ab" / ".tmp-crashed"
    old.write_bytes(b"half a chunk")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = tmp_path / "repo" / "snapshots" / ".tmp-writing"
    young.parent.mkdir(parents=True)
    young.write_bytes(b"a write in progress")

    assert store.remove_incomplete(datetime.now(UTC) - timedelta(hours=1)) == 1

    assert not old.exists() and young.exists()
    assert listing(store) == {"chunks/ab/real": 1}


def test_local_list_skips_a_file_deleted_while_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    keys = {f"chunks/ab/{n}" for n in range(5)}
    for key in keys:
        put_bytes(store, key, b"data")

    listed = store.list("chunks/")
    first = next(listed)
    for key in keys - {first.key}:
        store.delete(key)  # a concurrent prune, while the listing is half-way

    assert list(listed) == []


def test_local_list_of_a_repository_not_created_yet_is_empty(tmp_path: Path) -> None:
    assert listing(LocalStore(tmp_path / "nowhere")) == {}


@pytest.mark.parametrize("key", ["../outside", "chunks/../../outside", "/absolute", "chunks//ab", ".tmp-hidden", ""])
def test_local_refuses_keys_that_escape_or_hide(tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError, match="invalid object key"):
        put_bytes(LocalStore(tmp_path / "repo"), key, b"x")
    assert not (tmp_path / "outside").exists()


# --- S3Store: multipart ----------------------------------------------------------------------------------


@on_both_s3_servers()
def test_s3_multipart_put_round_trips_and_is_really_multipart(s3_server: Any, s3_bucket: str) -> None:
    store = s3_store(s3_server.endpoint_url, s3_bucket, part_size=PART_SIZE)
    data = os.urandom(12 * MiB + 4321)  # 5 + 5 + 2 MiB and a tail: three parts

    store.put("chunks/ab/big", io.BytesIO(data))

    assert get_bytes(store, "chunks/ab/big") == data
    assert head(store, "chunks/ab/big")["ETag"].strip('"').endswith("-3")


@on_both_s3_servers()
def test_s3_failed_multipart_put_aborts_the_upload_and_keeps_the_old_object(s3_server: Any, s3_bucket: str) -> None:
    store = s3_store(s3_server.endpoint_url, s3_bucket, part_size=PART_SIZE)
    put_bytes(store, "chunks/ab/big", b"old")

    with pytest.raises(RuntimeError):
        store.put("chunks/ab/big", BrokenStream(os.urandom(2 * PART_SIZE)))  # type: ignore[arg-type]

    assert get_bytes(store, "chunks/ab/big") == b"old"
    # An upload left open would be invisible storage that costs money until a lifecycle rule runs.
    assert store.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_aborts_only_the_old_multipart_uploads_under_its_prefix(s3_server: Any, s3_bucket: str) -> None:
    store = s3_store(s3_server.endpoint_url, s3_bucket)
    killed = store.client.create_multipart_upload(Bucket=s3_bucket, Key=f"{PREFIX}/chunks/ab/big")["UploadId"]
    elsewhere = store.client.create_multipart_upload(Bucket=s3_bucket, Key="someone-else/big")["UploadId"]

    # moto dates every upload 2010-11-10 (see the module docstring): before 2000 it is a young one.
    assert store.remove_incomplete(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert store.remove_incomplete(datetime.now(UTC) - timedelta(hours=1)) == 1

    left = store.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [upload["UploadId"] for upload in left] == [elsewhere] and killed != elsewhere
    store.client.abort_multipart_upload(Bucket=s3_bucket, Key="someone-else/big", UploadId=elsewhere)


# --- S3Store: permanent and transient errors -------------------------------------------------------------


STORE_CALLS = {
    "put": lambda store: put_bytes(store, "chunks/ab/k", b"x"),
    "open": lambda store: get_bytes(store, "chunks/ab/k"),
    "get_range": lambda store: store.get_range("chunks/ab/k", 0, 1),
    "exists": lambda store: store.exists("chunks/ab/k"),
    "list": lambda store: list(store.list("chunks/")),
    "delete": lambda store: store.delete("chunks/ab/k"),
}


@on_both_s3_servers()
@pytest.mark.parametrize("call", STORE_CALLS.values(), ids=STORE_CALLS.keys())
def test_s3_missing_bucket_fails_at_once_naming_the_bucket(s3_server: Any, call: Any) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    store = s3_store(s3_server.endpoint_url, bucket)

    with pytest.raises(StoreError) as raised:
        call(store)

    # Not "not found" (exists() must not answer False) and not worth retrying: the config is wrong.
    assert not isinstance(raised.value, ObjectNotFound | TransientStoreError)
    assert f"bucket '{bucket}' does not exist" in str(raised.value)
    assert "repository.url" in str(raised.value)


@on_both_s3_servers()
def test_s3_object_lock_on_a_bucket_without_it_says_so(s3_server: Any, s3_bucket: str) -> None:
    store = s3_store(s3_server.endpoint_url, s3_bucket, object_lock=LOCK)

    with pytest.raises(StoreError, match=r"has no Object Lock enabled.*repository\.object_lock"):
        put_bytes(store, "chunks/ab/k", b"x")


def reset_moto_auth(endpoint_url: str, unauthenticated_requests: float) -> None:
    """Make moto check credentials after ``unauthenticated_requests`` more requests (inf: never)."""
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth",
        data=str(unauthenticated_requests).encode(),
        headers={"Content-Type": "text/plain"},  # not a form: moto reads the raw body
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


ALLOW_S3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
DENY_DELETE = {"Effect": "Deny", "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"], "Resource": "*"}


@contextlib.contextmanager
def moto_auth(endpoint_url: str, users: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, tuple[str, str]]]:
    """Switch moto's credential checks on for the block; yield name -> (key id, secret) of IAM users
    with the given policy statements. Switched off again afterwards: the server is the session's."""
    setup_requests = 3 * len(users)  # create_user, put_user_policy, create_access_key
    reset_moto_auth(endpoint_url, setup_requests)
    try:
        iam = boto3.client(
            "iam", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        credentials = {}
        for name, statements in users.items():
            user = f"{name}-{uuid.uuid4().hex[:8]}"
            iam.create_user(UserName=user)
            policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
            iam.put_user_policy(UserName=user, PolicyName="lifeboat", PolicyDocument=policy)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            credentials[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        yield credentials
    finally:
        reset_moto_auth(endpoint_url, float("inf"))


@pytest.mark.parametrize("call", STORE_CALLS.values(), ids=STORE_CALLS.keys())
def test_s3_wrong_secret_fails_at_once_saying_what_to_check(s3_server: Any, s3_bucket: str, call: Any) -> None:
    with moto_auth(s3_server.endpoint_url, {"backup": [ALLOW_S3]}) as users:
        key_id, _ = users["backup"]
        waits: list[float] = []
        store = RetryingStore(s3_store(s3_server.endpoint_url, s3_bucket, key_id=key_id, secret="wrong"), sleep=waits.append)

        with pytest.raises(StoreError) as raised:
            call(store)

    assert not isinstance(raised.value, TransientStoreError | ObjectNotFound)
    # moto: SignatureDoesNotMatch, or a bare 403 for HEAD (exists), which has no body to carry a code.
    assert "access denied" in str(raised.value)
    assert "(SignatureDoesNotMatch)" in str(raised.value) or "(403)" in str(raised.value)
    assert "secret_access_key" in str(raised.value)
    assert "wrong" not in str(raised.value)  # the secret itself is never shown
    assert waits == []  # permanent: not retried


def test_s3_unknown_access_key_fails_saying_what_to_check(s3_server: Any, s3_bucket: str) -> None:
    with moto_auth(s3_server.endpoint_url, {}):
        store = s3_store(s3_server.endpoint_url, s3_bucket, key_id="AKIANOSUCHKEY0000000", secret="whatever")
        with pytest.raises(StoreError, match=r"access denied .*\(InvalidAccessKeyId\).*access_key_id"):
            put_bytes(store, "chunks/ab/k", b"x")


def test_s3_delete_denied_by_policy_is_not_called_locked(s3_server: Any) -> None:
    # Same answer as a retained version (AccessDenied), different cause: the object has no retention.
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    put_bytes(s3_store(s3_server.endpoint_url, bucket), "chunks/ab/plain", b"no retention")

    with moto_auth(s3_server.endpoint_url, {"pruner": [ALLOW_S3, DENY_DELETE]}) as users:
        key_id, secret = users["pruner"]
        store = s3_store(s3_server.endpoint_url, bucket, key_id=key_id, secret=secret, object_lock=LOCK)
        with pytest.raises(StoreError, match=r"access denied .*\(AccessDenied\)") as raised:
            store.delete("chunks/ab/plain")

    assert not isinstance(raised.value, ObjectLockedError)


@pytest.mark.parametrize("call", STORE_CALLS.values(), ids=STORE_CALLS.keys())
def test_s3_endpoint_down_is_transient(call: Any) -> None:
    endpoint_url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    store = s3_store(endpoint_url, "lifeboat")

    with pytest.raises(TransientStoreError, match=f"127.0.0.1:{endpoint_url.rsplit(':', 1)[1]}"):
        call(store)


def test_s3_retrying_store_gives_up_on_an_endpoint_that_stays_down() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
    store = RetryingStore(s3_store(f"http://127.0.0.1:{free_port()}", "lifeboat"), policy, sleep=waits.append)

    with pytest.raises(TransientStoreError, match=r"put chunks/ab/k: still failing after 4 attempts: .*connect"):
        put_bytes(store, "chunks/ab/k", b"x")

    assert len(waits) == 3  # between the four attempts
    assert all(0 <= wait <= policy.max_delay for wait in waits)


# --- S3Store: Object Lock ---------------------------------------------------------------------------------


@pytest.fixture
def locked_store(s3_server: Any) -> S3Store:
    """An S3Store with GOVERNANCE retention of one day on a fresh Object Lock bucket."""
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return s3_store(s3_server.endpoint_url, bucket, object_lock=LOCK, part_size=PART_SIZE)


def assert_retained_for_a_day(store: S3Store, key: str) -> None:
    answer = head(store, key)
    assert answer.get("ObjectLockMode") == "GOVERNANCE"
    until = answer["ObjectLockRetainUntilDate"]
    assert abs(until - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=5)


@on_both_s3_servers()
def test_s3_every_put_carries_retention_single_and_multipart(locked_store: S3Store) -> None:
    big = os.urandom(12 * MiB + 99)
    put_bytes(locked_store, "chunks/ab/small", b"small chunk")
    locked_store.put("chunks/cd/big", io.BytesIO(big))

    assert_retained_for_a_day(locked_store, "chunks/ab/small")
    assert_retained_for_a_day(locked_store, "chunks/cd/big")
    assert head(locked_store, "chunks/cd/big")["ETag"].strip('"').endswith("-3")
    assert get_bytes(locked_store, "chunks/cd/big") == big


@on_both_s3_servers()
def test_s3_lock_files_carry_no_retention_and_go_away_whole(locked_store: S3Store) -> None:
    put_bytes(locked_store, "locks/abc.json", b'{"exclusive": false}')
    put_bytes(locked_store, "locks/abc.json", b'{"exclusive": false, "heartbeat": 2}')  # a heartbeat rewrite

    assert "ObjectLockMode" not in head(locked_store, "locks/abc.json")
    locked_store.delete("locks/abc.json")

    assert not locked_store.exists("locks/abc.json")
    versions = locked_store.client.list_object_versions(Bucket=locked_store.bucket, Prefix=f"{PREFIX}/locks/")
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []


@on_both_s3_servers()
def test_s3_delete_of_a_retained_object_raises_object_locked_and_keeps_it(locked_store: S3Store) -> None:
    put_bytes(locked_store, "chunks/ab/kept", b"retained")

    with pytest.raises(ObjectLockedError, match=r"chunks/ab/kept is under Object Lock \(GOVERNANCE retention until"):
        locked_store.delete("chunks/ab/kept")

    assert get_bytes(locked_store, "chunks/ab/kept") == b"retained"


@on_both_s3_servers()
def test_s3_refused_delete_never_brings_back_an_older_version(s3_server: Any, locked_store: S3Store) -> None:
    put_bytes(locked_store, "snapshots/src/a.json.zst", b"old, retained")
    # The newest version has no retention (written without object_lock), the older one has.
    unlocked = s3_store(s3_server.endpoint_url, locked_store.bucket)
    put_bytes(unlocked, "snapshots/src/a.json.zst", b"new")

    with pytest.raises(ObjectLockedError):
        locked_store.delete("snapshots/src/a.json.zst")

    # Deleting newest-first would have removed "new" and left the old bytes as the object.
    assert get_bytes(locked_store, "snapshots/src/a.json.zst") == b"new"


@on_both_s3_servers()
def test_s3_delete_in_a_versioned_bucket_leaves_no_version_behind(s3_server: Any, s3_bucket: str) -> None:
    # Without this, prune would "delete" chunks whose bytes stay billed as noncurrent versions.
    s3_server.client().put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    store = s3_store(s3_server.endpoint_url, s3_bucket)
    put_bytes(store, "chunks/ab/k", b"one")
    put_bytes(store, "chunks/ab/k", b"two")

    store.delete("chunks/ab/k")

    versions = store.client.list_object_versions(Bucket=s3_bucket, Prefix=PREFIX)
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
