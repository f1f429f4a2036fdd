"""How table prints compare, and the changed share the anomaly guard sees (clickhouse.fingerprint, pure)."""

from __future__ import annotations

from typing import Any

from backup.sources.base import Verdict
from backup.sources.clickhouse.fingerprint import TablePrint, changed_fraction, compare

from .samples import COLUMNS


def printed(name: str, partitions: dict[str, tuple[int, int]], *, unpinned: set[str] | None = None) -> TablePrint:
    return TablePrint("features", name, COLUMNS, True, None, dict(partitions), unpinned or set())


def test_equal_prints_match() -> None:
    expected = {("features", "events"): printed("events", {"202611": (1000, 5), "202610": (10, 6)})}
    result = compare(expected, dict(expected), shown={})
    assert (result.verdict, result.differences, result.partitions, result.rows) == (Verdict.MATCH, [], 2, 1010)


def test_differences_name_table_and_partition() -> None:
    expected = {
        ("features", "events"): printed("events", {"202611": (1000, 5), "202610": (10, 6), "202609": (3, 3)}),
        ("features", "users"): printed("users", {"all": (5, 1)}),
    }
    actual: dict[Any, TablePrint | str] = {
        ("features", "events"): printed("events", {"202611": (999, 4), "202610": (10, 7), "202612": (1, 1)}),
        ("features", "users"): "missing from scratch",
    }
    result = compare(expected, actual, shown={})
    assert result.verdict is Verdict.MISMATCH
    assert result.differences == [
        "features.events partition 202609: missing (snapshot has 3 rows)",
        "features.events partition 202610: count 10 equal, hash differs",
        "features.events partition 202611: count 1000 vs 999, hash differs",
        "features.events partition 202612: not in the snapshot (1 rows restored)",
        "features.users: missing from scratch",
    ]


def test_a_difference_in_an_unpinned_partition_is_unverified_not_a_pass() -> None:
    expected = {("features", "events"): printed("events", {"202611": (1000, 5)}, unpinned={"202611"})}
    actual: dict[Any, TablePrint | str] = {("features", "events"): printed("events", {"202611": (1001, 9)})}
    result = compare(expected, actual, shown={})
    assert result.verdict is Verdict.UNVERIFIED
    assert result.unverifiable == ["features.events partition 202611: count 1000 vs 1001, hash differs"]


def test_empty_partitions_compare_equal_to_absent_ones() -> None:
    expected = {("features", "log"): TablePrint("features", "log", COLUMNS, False, None, {"": (0, 0)})}
    actual: dict[Any, TablePrint | str] = {("features", "log"): TablePrint("features", "log", COLUMNS, False, None, {})}
    assert compare(expected, actual, shown={}).verdict is Verdict.MATCH


def test_appends_are_not_rewrites_for_the_anomaly_guard() -> None:
    before = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (300, 2)})}
    appended = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (350, 3), "202612": (5, 4)})}
    assert changed_fraction(before, appended) == 0.0
    rewritten = {("features", "events"): printed("events", {"202610": (100, 1), "202611": (300, 9)})}
    assert changed_fraction(before, rewritten) == 0.75
    dropped = {("features", "events"): printed("events", {"202611": (300, 2)})}
    assert changed_fraction(before, dropped) == 0.25
    assert changed_fraction({}, appended) is None
