"""The S3 source's census and the anomaly guard, bucket digests, and entry metadata."""

from __future__ import annotations

from datetime import UTC, datetime

from backup.jobs import anomalies_against
from backup.sources.base import SnapshotOutcome
from backup.sources.s3.digest import BucketSum, SnapshotTally, metadata_view, object_meta
from backup.sources.s3.listing import PreviousEntries
from backup.sources.s3.targets import put_arguments
from policies.model import AnomalyGuard

from .samples import entry, header, listed


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


def test_tags_expires_redirect_and_storage_class_are_kept_and_recreated() -> None:
    response = {
        "ETag": '"abc"',
        "LastModified": datetime(2026, 11, 28, 3, 4, 5, tzinfo=UTC),
        "Expires": datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC),
        "WebsiteRedirectLocation": "/elsewhere",
    }
    meta = {**object_meta("models", "k", response), "tags": {"b": "two words", "a": "1&2"}, "storage_class": "GLACIER"}
    assert meta["expires"] == "2031-01-02T03:04:05+00:00" and meta["website_redirect_location"] == "/elsewhere"
    assert metadata_view(meta)["expires"] == meta["expires"]
    assert put_arguments(meta) == {
        "Expires": datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC),
        "WebsiteRedirectLocation": "/elsewhere",
        "Tagging": "a=1%262&b=two%20words",
    }
    assert put_arguments(meta, storage_class=True)["StorageClass"] == "GLACIER"
    assert "StorageClass" not in put_arguments({**meta, "storage_class": "STANDARD"}, storage_class=True)


def test_a_view_without_the_new_attributes_is_the_one_older_snapshots_digested() -> None:
    """Expires and the redirect enter the view only when set, so an older snapshot's metadata digest
    (which never held them) is still what its restored copy gives."""
    plain = {"content_type": "text/plain", "metadata": {"a": "b"}}
    assert set(metadata_view(plain)) == {
        "content_type", "content_encoding", "cache_control", "content_disposition", "content_language", "metadata",
    }  # fmt: skip


def test_tag_and_storage_class_digests_see_each_change_and_are_left_out_when_not_kept() -> None:
    def digest(tags: dict[str, str] | None, storage_class: str | None = "STANDARD") -> dict[str, object]:
        total = BucketSum()
        total.add("k", 1, "0" * 64, {"content_type": "x"}, tags=tags, storage_class=storage_class)
        total.add("j", 1, "1" * 64, {"content_type": "x"}, tags={}, storage_class="STANDARD")
        return total.fingerprint()

    same = digest({"a": "1"})
    assert same["tags_digest"] != digest({"a": "2"})["tags_digest"]
    assert same["tags_digest"] != digest({})["tags_digest"]
    assert same["metadata_digest"] == digest({"a": "2"})["metadata_digest"]  # tags are apart from metadata
    assert same["storage_class_digest"] != digest({"a": "1"}, "GLACIER")["storage_class_digest"]
    assert "tags_digest" not in digest(None) and "storage_class_digest" not in digest({}, None)
