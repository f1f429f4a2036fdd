"""The S3 source's listing scope and the incremental merge with the previous snapshot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backup.repository.manifest import ChunkRef, Entry
from backup.repository.packs import ChunkSink
from backup.sources.s3.listing import PreviousEntries, key_prefixes, reusable
from policies.errors import IntegrityError

from .samples import entry, listed


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
    old = entry("a", "k", size=10, etag="e1", chunks=[ChunkRef("c1", 10)])
    packed = entry("a", "k", size=10, etag="e1", chunks=[ChunkRef("c1", 10, "p1", 0, 30)])
    assert reusable(old, listed("a", "k", size=10, etag="e1"), ChunkSink({"c1"}))
    assert reusable(packed, listed("a", "k", size=10, etag="e1"), ChunkSink({"p1"}))
    assert not reusable(packed, listed("a", "k", size=10, etag="e1"), ChunkSink({"c1"}))  # its pack is gone
    assert not reusable(old, listed("a", "k", size=11, etag="e1"), ChunkSink({"c1"}))
    assert not reusable(old, listed("a", "k", size=10, etag="e2"), ChunkSink({"c1"}))
    assert not reusable(old, listed("a", "k", size=10, etag="e1", modified="2026-11-28T03:00:00+00:00"), ChunkSink({"c1"}))
    assert not reusable(old, listed("a", "k", size=10, etag="e1"), ChunkSink(set()))  # pruned meanwhile: read it again
    assert reusable(entry("a", "empty", size=0, chunks=[]), listed("a", "empty", size=0), ChunkSink(set()))
