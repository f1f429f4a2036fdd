"""The drift rule (drills/drift.py): a snapshot short of both the live source and the previous
snapshot fails; shrinking, growth and noise below the thresholds do not; a source that cannot be
read is an ERROR. ``check_drift`` runs against a real local repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from drills.drift import Reading, Shortfall, check_drift, find_shortfalls, markedly_less
from drills.model import Status, Step
from drills.steps import step
from policies.errors import SourceError
from policies.model import DriftThresholds

DEFAULT = DriftThresholds()


def s3(objects: int, size: int | None = None, **buckets: int) -> Reading:
    size = objects * 100 if size is None else size
    groups = {name: {"objects": count, "bytes": count * 100} for name, count in (buckets or {"models": objects}).items()}
    return Reading.of({"totals": {"objects": objects, "bytes": size}, "buckets": groups})


def test_a_partial_listing_is_short_of_both_naming_the_bucket_and_the_total() -> None:
    found = find_shortfalls(s3(17), s3(34), s3(34), DEFAULT)
    assert [item.describe() for item in found] == ["bucket models: 17 of 34 objects", "total: 17 of 34 objects"]


@pytest.mark.parametrize(
    ("snapshot", "live", "previous", "why"),
    [
        (20, 20, 34, "the source shrank: the live source holds no more than the snapshot"),
        (34, 54, 34, "the source grew since the snapshot: the previous snapshot holds no more"),
        (34, 54, 20, "growth over two snapshots"),
        (30, 34, 34, "4 missing: under the 10-item floor"),
        (300, 320, 320, "20 of 320 missing: under 10%"),
        (34, 34, 34, "nothing moved"),
    ],
)
def test_what_is_not_a_shortfall(snapshot: int, live: int, previous: int, why: str) -> None:
    assert find_shortfalls(s3(snapshot), s3(live), s3(previous), DEFAULT) == [], why


def test_thresholds_come_from_the_policy() -> None:
    strict = DriftThresholds(max_missing_fraction=0.01, min_missing_items=1)
    assert [item.describe() for item in find_shortfalls(s3(30), s3(34), s3(34), strict)][-1] == "total: 30 of 34 objects"
    assert find_shortfalls(s3(17), s3(34), s3(34), DriftThresholds(max_missing_fraction=0.6)) == []


def test_markedly_less_needs_both_the_share_and_the_floor_and_bytes_have_their_own_floor() -> None:
    assert markedly_less(80, 100, "rows", DEFAULT) and not markedly_less(91, 100, "rows", DEFAULT)
    assert not markedly_less(0, 9, "rows", DEFAULT)  # everything gone, but only 9 items
    assert not markedly_less(0, 500_000, "bytes", DEFAULT)  # under the 1 MiB floor
    assert markedly_less(0, 5 * 1024 * 1024, "bytes", DEFAULT)


def test_bytes_are_compared_too() -> None:
    mib = 1024 * 1024
    found = find_shortfalls(s3(34, 10 * mib), s3(34, 40 * mib), s3(34, 40 * mib), DEFAULT)
    assert found == [Shortfall("total", "bytes", 10 * mib, 40 * mib, 40 * mib)]


def test_a_group_the_snapshot_lacks_counts_zero_and_only_the_group_fails() -> None:
    snapshot = s3(1000, models=1000)
    both = s3(1020, models=1000, datasets=20)
    assert [item.describe() for item in find_shortfalls(snapshot, both, both, DEFAULT)] == [
        "bucket datasets: 0 of 20 objects"
    ]


def test_ignored_groups_are_left_out_but_totals_stay() -> None:
    snapshot = Reading.of({"totals": {"keys": 1000}, "resources": {"pods": 1000}})
    both = Reading.of({"totals": {"keys": 1030}, "resources": {"pods": 1000, "events": 30}})
    assert find_shortfalls(snapshot, both, both, DriftThresholds(ignore=["ev*"])) == []
    assert len(find_shortfalls(snapshot, both, both, DEFAULT)) == 1


def test_etcd_group_maps_of_plain_numbers_count_keys_and_the_emptiest_group_comes_first() -> None:
    census = {
        "revision": 9,
        "totals": {"keys": 60},
        "resources": {"pods": 40, "secrets": 20},
        "prefixes": {"/registry/": 60},
    }
    reading = Reading.of(census)
    assert reading.groups["resources"] == {"pods": {"keys": 40}, "secrets": {"keys": 20}}
    short = Reading.of({"totals": {"keys": 40}, "resources": {"pods": 40}, "prefixes": {"/registry/": 40}})
    described = [item.describe() for item in find_shortfalls(short, reading, reading, DEFAULT)]
    assert described == ["resource secrets: 0 of 20 keys", "prefix /registry/: 40 of 60 keys", "total: 40 of 60 keys"]


def test_a_measure_a_reading_lacks_is_not_compared() -> None:
    """ClickHouse: a logical snapshot records exported bytes, the live server has no such figure."""
    snapshot = Reading.of({"totals": {"rows": 100, "bytes": 10}, "tables": {"db.t": {"rows": 100, "bytes": 10}}})
    previous = Reading.of({"totals": {"rows": 100, "bytes": 10**9}, "tables": {"db.t": {"rows": 100, "bytes": 10**9}}})
    live = Reading.of({"totals": {"rows": 100}, "tables": {"db.t": {"rows": 100}}})
    assert find_shortfalls(snapshot, live, previous, DEFAULT) == []


# ---- the step, against a real repository ----------------------------------------------------------


class CountedSource:
    """A source whose live census is given (or whose reading fails)."""

    kind = "s3"

    def __init__(self, census: dict[str, Any] | Exception) -> None:
        self.name = "models"
        self._census = census

    def census(self) -> dict[str, Any]:
        if isinstance(self._census, Exception):
            raise self._census
        return self._census


def census(objects: int) -> dict[str, Any]:
    return {
        "totals": {"objects": objects, "bytes": objects * 10},
        "buckets": {"models": {"objects": objects, "bytes": objects * 10}},
    }


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"))


def commit(repository: Repository, objects: int, *, minutes_ago: int, status: str = "good") -> Any:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    with repository.begin_snapshot("models", "s3", started=started) as writer:
        return writer.commit(status=status, census=census(objects))  # type: ignore[arg-type]


def run_step(source: CountedSource, repository: Repository, header: Any) -> Step:
    steps: list[Step] = []
    with step(steps, "drift") as outcome:
        check_drift(source, repository, header, DEFAULT, outcome)  # type: ignore[arg-type]
    return steps[0]


def test_the_step_fails_a_partial_snapshot_against_the_previous_good_one(repository: Repository) -> None:
    commit(repository, 34, minutes_ago=30)
    commit(repository, 5, minutes_ago=20, status="suspicious")  # never the comparison: not trusted
    header = commit(repository, 17, minutes_ago=10)
    done = run_step(CountedSource(census(34)), repository, header)
    assert done.verdict is Status.FAIL
    assert done.message.splitlines()[0].endswith("bucket models: 17 of 34 objects; total: 17 of 34 objects")
    assert done.details["shortfalls"][0] == {
        "where": "bucket models",
        "measure": "objects",
        "snapshot": 17,
        "live": 34,
        "previous": 34,
    }


def test_the_step_compares_with_snapshots_before_the_drilled_one_only(repository: Repository) -> None:
    header = commit(repository, 17, minutes_ago=30)
    commit(repository, 34, minutes_ago=10)  # newer than the drilled snapshot: not its previous one
    done = run_step(CountedSource(census(34)), repository, header)
    assert done.verdict is Status.PASS and done.details["previous"] is None
    assert "no earlier good snapshot" in done.message and "total: 17 of 34 objects" in done.message


def test_an_unreadable_live_source_is_an_error(repository: Repository) -> None:
    commit(repository, 34, minutes_ago=20)
    header = commit(repository, 34, minutes_ago=10)
    done = run_step(CountedSource(SourceError("endpoint refused the connection")), repository, header)
    assert done.verdict is Status.ERROR
    assert "could not read the live source 'models'" in done.message and "refused" in done.message


def test_a_snapshot_without_a_census_is_an_error_not_a_pass(repository: Repository) -> None:
    with repository.begin_snapshot("models", "s3") as writer:
        header = writer.commit()
    done = run_step(CountedSource(census(34)), repository, header)
    assert done.verdict is Status.ERROR and "no census" in done.message
