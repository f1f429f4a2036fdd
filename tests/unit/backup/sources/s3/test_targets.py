"""The S3 source's restore targets: part sizes, endpoints, and which objects a target holds."""

from __future__ import annotations

from backup.sources.s3.targets import MIB, PART_SIZE, BucketTarget, View, part_size, same_endpoint

from .samples import entry, header


def test_large_objects_get_parts_within_the_s3_limit() -> None:
    assert part_size(100 * MIB) == PART_SIZE
    assert part_size(5 * 1024**4) * 10_000 >= 5 * 1024**4 and part_size(5 * 1024**4) % MIB == 0


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
