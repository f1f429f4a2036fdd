"""The S3 source's pure logic: the incremental merge, census and the anomaly guard, digests,
retries, error wording, restore targets (no server: see tests/integration/test_source_s3.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, SSLError

from backup.jobs import anomalies_against
from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.retry import RetryPolicy
from backup.sources.base import RestoreOptions, SnapshotOutcome
from backup.sources.s3.source import (
    MIB,
    PART_SIZE,
    BucketSum,
    BucketTarget,
    DirectoryTarget,
    Hints,
    Listed,
    PreviousEntries,
    S3Source,
    SnapshotTally,
    View,
    call_with_retry,
    explain,
    is_transient,
    key_prefixes,
    metadata_view,
    object_meta,
    part_size,
    put_arguments,
    reusable,
    same_endpoint,
)
from policies.errors import IntegrityError, RestoreError
from policies.model import AnomalyGuard, S3Settings

T0 = "2026-11-28T02:00:00+00:00"
HINTS = Hints(endpoint="sources.m.endpoint_url", credentials="sources.m.access_key_id", bucket="sources.m.buckets")


def entry(bucket: str, key: str, *, size: int = 10, etag: str = "e", chunks: list[tuple[str, int]] | None = None) -> Entry:
    meta = {"bucket": bucket, "key": key, "etag": etag, "last_modified": T0, "content_type": "text/plain"}
    return Entry(f"{bucket}/{key}", size, "0" * 64, chunks if chunks is not None else [("c-" + key, size)], meta)


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


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} said the server"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


# ---- listing scope ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "prefixes"),
    [
        ([], [""]),
        (["b/", "a/"], ["a/", "b/"]),
        (["a", "a/b", "ab", "b"], ["a", "b"]),
        (["data/2026/", "data/", "logs/"], ["data/", "logs/"]),
    ],
)
def test_include_prefixes_are_listed_once_each_in_key_order(include: list[str], prefixes: list[str]) -> None:
    assert key_prefixes(include) == prefixes


# ---- the incremental merge --------------------------------------------------------------------------


def test_the_merge_finds_previous_entries_and_counts_the_gone() -> None:
    before = PreviousEntries(iter([entry("a", "1"), entry("a", "2"), entry("a", "4"), entry("b", "1")]))
    found = [before.take(bucket, key) for bucket, key in [("a", "1"), ("a", "3"), ("a", "4"), ("b", "0"), ("b", "2")]]
    before.finish()
    assert [item.name if item else None for item in found] == ["a/1", None, "a/4", None, None]
    assert before.unmatched == 2  # a/2 and b/1 are gone
    assert before.usable


def test_a_previous_snapshot_out_of_key_order_is_not_used() -> None:
    before = PreviousEntries(iter([entry("a", "2"), entry("a", "1"), entry("a", "3")]))
    assert before.take("a", "2") is not None
    assert not before.usable
    assert before.take("a", "3") is None  # read again rather than trusted


def test_an_unreadable_previous_snapshot_is_not_used() -> None:
    def broken() -> Iterator[Entry]:
        yield entry("a", "1")
        raise IntegrityError("chunk abc is missing from the repository")

    before = PreviousEntries(broken())
    assert before.take("a", "1") is not None
    assert before.take("a", "2") is None and not before.usable


def test_an_entry_is_reused_only_when_size_etag_time_match_and_its_chunks_exist() -> None:
    old = entry("a", "k", size=10, etag="e1", chunks=[("c1", 10)])
    assert reusable(old, listed("a", "k", size=10, etag="e1"), {"c1"})
    assert not reusable(old, listed("a", "k", size=11, etag="e1"), {"c1"})
    assert not reusable(old, listed("a", "k", size=10, etag="e2"), {"c1"})
    assert not reusable(old, listed("a", "k", size=10, etag="e1", modified="2026-11-28T03:00:00+00:00"), {"c1"})
    assert not reusable(old, listed("a", "k", size=10, etag="e1"), set())  # pruned meanwhile: read it again
    assert reusable(entry("a", "empty", size=0, chunks=[]), listed("a", "empty", size=0), set())


# ---- census and the anomaly guard -------------------------------------------------------------------


def tally_after(changes: int, *, total: int = 100) -> SnapshotOutcome:
    tally = SnapshotTally(buckets={"a": BucketSum()})
    for number in range(total):
        key = f"k{number:03d}"
        tally.compare(entry("a", key, etag="old"), listed("a", key, etag="new" if number < changes else "old"))
        tally.record(entry("a", key))
    before = PreviousEntries(iter([]))
    return tally.outcome(header(total, census={"totals": {"objects": total, "bytes": 10 * total}}), before, {})


def test_the_changed_share_is_of_the_previous_objects() -> None:
    outcome = tally_after(60)
    assert outcome.census["changed_fraction"] == 0.6
    assert outcome.census["totals"] == {"objects": 100, "bytes": 1000}
    assert outcome.figures["objects_changed"] == 60


def test_the_guard_flags_ransomware_and_mass_deletion_but_not_ordinary_change() -> None:
    guard = AnomalyGuard()
    previous = header(100, census={"totals": {"objects": 100, "bytes": 1000}})
    assert anomalies_against(previous, tally_after(10), guard) == []
    [ransomware] = anomalies_against(previous, tally_after(60), guard)
    assert "60% of items changed content" in ransomware

    shrunk = SnapshotTally(buckets={"a": BucketSum()})
    for number in range(40):
        shrunk.record(entry("a", f"k{number}"))
    found = anomalies_against(previous, shrunk.outcome(previous, PreviousEntries(iter([])), {}), guard)
    assert any("objects shrank by 60%" in line for line in found)


def test_a_first_snapshot_states_no_changed_share() -> None:
    tally = SnapshotTally(buckets={"a": BucketSum()})
    tally.record(entry("a", "k"))
    outcome = tally.outcome(None, PreviousEntries(None), {})
    assert "changed_fraction" not in outcome.census
    assert outcome.fingerprint["objects"] == 1 and "content_digest" in outcome.fingerprint["buckets"]["a"]


def test_bucket_digests_ignore_order_and_see_every_change() -> None:
    objects = [(f"k{number}", number, f"{number:064x}") for number in range(50)]

    def digest(items: list[tuple[str, int, str]], meta: str = "text/plain") -> dict[str, object]:
        total = BucketSum()
        for key, size, sha in items:
            total.add(key, size, sha, {"content_type": meta})
        return total.fingerprint()

    assert digest(objects) == digest(list(reversed(objects)))
    renamed = [("other", *objects[0][1:]), *objects[1:]]
    assert digest(renamed)["content_digest"] != digest(objects)["content_digest"]
    changed = [(objects[0][0], objects[0][1], "f" * 64), *objects[1:]]
    assert digest(changed)["content_digest"] != digest(objects)["content_digest"]
    assert digest(objects, meta="application/json")["metadata_digest"] != digest(objects)["metadata_digest"]


# ---- metadata ---------------------------------------------------------------------------------------


def test_entry_meta_comes_from_the_get_response_and_recreates_the_object() -> None:
    response = {
        "ETag": '"abc-2"',
        "LastModified": datetime(2026, 11, 28, 3, 4, 5, tzinfo=UTC),
        "ContentType": "application/json",
        "ContentEncoding": "gzip",
        "CacheControl": "max-age=60",
        "Metadata": {"owner": "team-a"},
    }
    meta = object_meta("models", "k", response)
    assert meta == {
        "bucket": "models",
        "key": "k",
        "etag": "abc-2",
        "last_modified": "2026-11-28T03:04:05+00:00",
        "content_type": "application/json",
        "content_encoding": "gzip",
        "cache_control": "max-age=60",
        "metadata": {"owner": "team-a"},
    }
    assert put_arguments(meta) == {
        "ContentType": "application/json",
        "ContentEncoding": "gzip",
        "CacheControl": "max-age=60",
        "Metadata": {"owner": "team-a"},
    }
    assert metadata_view(meta)["metadata"] == {"owner": "team-a"} and metadata_view(meta)["content_language"] is None


def test_large_objects_get_parts_within_the_s3_limit() -> None:
    assert part_size(100 * MIB) == PART_SIZE
    assert part_size(5 * 1024**4) * 10_000 >= 5 * 1024**4 and part_size(5 * 1024**4) % MIB == 0


# ---- retries and errors -----------------------------------------------------------------------------


def test_what_is_worth_a_retry() -> None:
    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(client_error("InternalError", 500))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert not is_transient(client_error("AccessDenied", 403))
    assert not is_transient(client_error("NoSuchBucket", 404))
    assert not is_transient(SSLError(endpoint_url="https://x", error="certificate verify failed"))


def test_retries_are_bounded_with_backoff() -> None:
    waits: list[float] = []
    calls: list[int] = []
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=1.0)

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    assert call_with_retry(flaky, what="get", policy=policy, sleep=waits.append) == "ok"
    assert len(waits) == 2 and all(0 <= wait <= 0.1 * 2**number for number, wait in enumerate(waits))

    def down() -> str:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    waits.clear()
    with pytest.raises(EndpointConnectionError):
        call_with_retry(down, what="list", policy=policy, sleep=waits.append)
    assert len(waits) == 3  # four attempts

    def denied() -> str:
        raise client_error("AccessDenied", 403)

    waits.clear()
    with pytest.raises(ClientError):
        call_with_retry(denied, what="get", policy=policy, sleep=waits.append)
    assert waits == []  # a permanent error fails at once


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (client_error("NoSuchBucket", 404), ["bucket 'models' does not exist at http://minio:9000", "sources.m.buckets"]),
        (
            client_error("SignatureDoesNotMatch", 403),
            ["access denied to bucket 'models'", "SignatureDoesNotMatch", "sources.m.access_key_id"],
        ),
        (client_error("InvalidAccessKeyId", 403), ["access denied", "InvalidAccessKeyId"]),
        (
            EndpointConnectionError(endpoint_url="http://minio:9000"),
            ["cannot connect to http://minio:9000", "sources.m.endpoint_url"],
        ),
        (client_error("InternalError", 500), ["InternalError from http://minio:9000 (HTTP 500)"]),
    ],
)
def test_errors_say_what_to_fix(error: Exception, fragments: list[str]) -> None:
    message = explain(error, endpoint="http://minio:9000", bucket="models", hints=HINTS)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in message


# ---- restore targets --------------------------------------------------------------------------------


def source(**overrides: object) -> S3Source:
    fields: dict[str, object] = {
        "kind": "s3", "endpoint_url": "http://minio.ml.svc:9000", "access_key_id": "k", "secret_access_key": "s",
        "buckets": ["models", "datasets"],
    }  # fmt: skip
    return S3Source("models", S3Settings.model_validate({**fields, **overrides}))


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_a_bucket_target_defaults_to_the_source_endpoint_and_credentials() -> None:
    target = source().parse_target(RestoreOptions(to_bucket="restored", to_prefix="drill/1", prefix="weights/"))
    assert target == BucketTarget("http://minio.ml.svc:9000", "restored", prefix="drill/1/", select="weights/")


def test_aws_environment_credentials_are_used_for_the_target_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "restore-operator")
    target = source().parse_target(RestoreOptions(to_endpoint="https://s3.dc2:9000/", to_bucket="restored"))
    assert isinstance(target, BucketTarget)
    assert target.environment_credentials and target.endpoint_url == "https://s3.dc2:9000"


def test_a_directory_target(tmp_path: Path) -> None:
    target = source().parse_target(RestoreOptions(to_dir=str(tmp_path / "out"), prefix="a/"))
    assert target == DirectoryTarget(tmp_path / "out", select="a/")


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (
            RestoreOptions(to_host="ch-1", to_database="f"),
            ["--to-host, --to-database", "not an option for s3", "--to-bucket", "--to-dir"],
        ),
        (RestoreOptions(to_data_dir="/var/lib/etcd"), ["--to-data-dir"]),
        (RestoreOptions(), ["no restore target", "--to-bucket B"]),
        (RestoreOptions(to_dir="/tmp/x", to_bucket="b"), ["cannot be combined"]),
        (RestoreOptions(to_bucket="models"), ["bucket of source 'models' itself", "--in-place --yes"]),
        (RestoreOptions(to_bucket="models", to_endpoint="http://MINIO.ml.svc:9000/"), ["--in-place --yes"]),
        (RestoreOptions(to_bucket="other", in_place=True), ["--in-place", "not a bucket of source"]),
        (RestoreOptions(to_bucket="b", to_endpoint="minio:9000"), ["not an http(s) URL"]),
    ],
)
def test_wrong_restore_options_are_refused_saying_what_to_use(options: RestoreOptions, fragments: list[str]) -> None:
    with pytest.raises(RestoreError) as refused:
        source().parse_target(options)
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_keys_given_for_the_target_are_kept_out_of_its_repr() -> None:
    target = source().parse_target(RestoreOptions(to_bucket="scratch", to_access_key_id="AK", to_secret_access_key="SK"))
    assert isinstance(target, BucketTarget) and target.credentials == ("AK", "SK")
    assert "SK" not in repr(target)
    with pytest.raises(RestoreError, match="give both"):
        source().parse_target(RestoreOptions(to_bucket="scratch", to_access_key_id="AK"))
    with pytest.raises(RestoreError, match="--to-user"):
        source().parse_target(RestoreOptions(to_bucket="scratch", to_user="default"))


def test_in_place_is_allowed_when_asked_for() -> None:
    target = source().parse_target(RestoreOptions(to_bucket="datasets", in_place=True, yes=True))
    assert isinstance(target, BucketTarget) and target.in_place
    assert source().parse_target(RestoreOptions(to_bucket="models", to_endpoint="http://other:9000")).in_place is False  # type: ignore[union-attr]


def test_same_endpoint_ignores_case_slashes_and_default_ports() -> None:
    assert same_endpoint("http://MinIO:80", "http://minio")
    assert same_endpoint("https://s3.dc2", "https://s3.dc2:443")
    assert not same_endpoint("http://minio:9000", "https://minio:9000")
    assert not same_endpoint("http://minio:9000", None)
    assert same_endpoint(None, None)


def test_objects_of_several_buckets_are_restored_under_their_bucket_name() -> None:
    two = header(2, census={"buckets": {"models": {}, "datasets": {}}})
    view = View.of(two, BucketTarget(None, "restored"))
    assert view.relative(entry("models", "w.bin")) == "models/w.bin"
    assert view.origin("datasets/x/y") == ("datasets", "x/y")
    one = View.of(header(1, census={"buckets": {"models": {}}}), BucketTarget(None, "restored", select="w"))
    assert one.relative(entry("models", "w.bin")) == "w.bin" and one.relative(entry("models", "x.bin")) is None
    in_place = View.of(two, BucketTarget(None, "datasets", in_place=True))
    assert in_place.relative(entry("datasets", "x")) == "x" and in_place.relative(entry("models", "x")) is None
