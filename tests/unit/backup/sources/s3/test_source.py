"""The S3 source's restore options: which target they name, and the mistakes refused with what to
use instead (no server: see tests/integration/test_source_s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.sources.base import RestoreOptions
from backup.sources.s3.source import S3Source
from backup.sources.s3.targets import BucketTarget, DirectoryTarget
from policies.errors import RestoreError
from policies.model import S3Settings


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
    target = source().parse_target(RestoreOptions.of(to_bucket="restored", to_prefix="drill/1", prefix="weights/"))
    assert target == BucketTarget("http://minio.ml.svc:9000", "restored", prefix="drill/1/", select="weights/")


def test_aws_environment_credentials_are_used_for_the_target_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "restore-operator")
    target = source().parse_target(RestoreOptions.of(to_endpoint="https://s3.dc2:9000/", to_bucket="restored"))
    assert isinstance(target, BucketTarget)
    assert target.environment_credentials and target.endpoint_url == "https://s3.dc2:9000"


def test_a_directory_target(tmp_path: Path) -> None:
    target = source().parse_target(RestoreOptions.of(to_dir=str(tmp_path / "out"), prefix="a/"))
    assert target == DirectoryTarget(tmp_path / "out", select="a/")


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (
            RestoreOptions.of(to_host="ch-1", to_database="f"),
            ["--to-host, --to-database", "not an option for s3", "--to-bucket", "--to-dir"],
        ),
        (RestoreOptions.of(to_data_dir="/var/lib/etcd"), ["--to-data-dir"]),
        (RestoreOptions.of(), ["no restore target", "--to-bucket B"]),
        (RestoreOptions.of(to_dir="/tmp/x", to_bucket="b"), ["cannot be combined"]),
        (RestoreOptions.of(to_bucket="models"), ["bucket of source 'models' itself", "--in-place --yes"]),
        (RestoreOptions.of(to_bucket="models", to_endpoint="http://MINIO.ml.svc:9000/"), ["--in-place --yes"]),
        (RestoreOptions.of(to_bucket="other", in_place=True), ["--in-place", "not a bucket of source"]),
        (RestoreOptions.of(to_bucket="b", to_endpoint="minio:9000"), ["not an http(s) URL"]),
    ],
)
def test_wrong_restore_options_are_refused_saying_what_to_use(options: RestoreOptions, fragments: list[str]) -> None:
    with pytest.raises(RestoreError) as refused:
        source().parse_target(options)
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_keys_given_for_the_target_are_kept_out_of_its_repr() -> None:
    target = source().parse_target(RestoreOptions.of(to_bucket="scratch", to_access_key_id="AK", to_secret_access_key="SK"))
    assert isinstance(target, BucketTarget) and target.credentials == ("AK", "SK")
    assert "SK" not in repr(target)
    with pytest.raises(RestoreError, match="give both"):
        source().parse_target(RestoreOptions.of(to_bucket="scratch", to_access_key_id="AK"))
    with pytest.raises(RestoreError, match="--to-user"):
        source().parse_target(RestoreOptions.of(to_bucket="scratch", to_user="default"))


def test_in_place_is_allowed_when_asked_for() -> None:
    target = source().parse_target(RestoreOptions.of(to_bucket="datasets", in_place=True, yes=True))
    assert isinstance(target, BucketTarget) and target.in_place
    assert source().parse_target(RestoreOptions.of(to_bucket="models", to_endpoint="http://other:9000")).in_place is False  # type: ignore[union-attr]
