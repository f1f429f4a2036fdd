"""Retention selection (policies.retention): restic ``forget`` semantics plus Lifeboat's guards.

Each table row lists snapshots by time (UTC unless an offset is written), the rules, and the
exact snapshots that must survive; everything else must be forgotten.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import pytest

from policies.model import Retention
from policies.retention import (
    FOR_REVIEW,
    FUTURE,
    NEWEST_GOOD,
    NO_RULE,
    SUSPICIOUS_TOO_OLD,
    Decision,
    SnapshotRef,
    plan,
    select,
)

NOW = datetime(2031, 1, 1, tzinfo=UTC)


def _time(when: str) -> datetime:
    time = datetime.fromisoformat(when)
    return time if time.tzinfo else time.replace(tzinfo=UTC)


def sid(when: str, suffix: str = "abcd") -> str:
    """The id a snapshot taken at ``when`` gets, e.g. ``src-20261128T235959Z-abcd``."""
    return f"src-{_time(when).astimezone(UTC):%Y%m%dT%H%M%S}Z-{suffix}"


def snap(when: str, *, suspicious: bool = False, suffix: str = "abcd") -> SnapshotRef:
    return SnapshotRef(id=sid(when, suffix), time=_time(when), suspicious=suspicious)


def kept_ids(decisions: list[Decision]) -> set[str]:
    return {decision.snapshot.id for decision in decisions if decision.keep}


def reasons_by_id(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {decision.snapshot.id: decision.reasons for decision in decisions}


# (snapshots, rules, now, kept)
KEPT_CASES = [
    pytest.param(
        [snap(f"2026-11-{day:02d}T10:00:00") for day in range(20, 26)],
        Retention(keep_last=3),
        NOW,
        {sid("2026-11-25T10:00:00"), sid("2026-11-24T10:00:00"), sid("2026-11-23T10:00:00")},
        id="last-3-of-6",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00"), snap("2026-11-27T10:00:00")],
        Retention(keep_last=5),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-27T10:00:00")},
        id="last-5-of-2-keeps-all",
    ),
    pytest.param(
        [
            snap("2026-11-29T00:10:00"),
            snap("2026-11-29T00:00:00"),
            snap("2026-11-28T23:59:59"),
            snap("2026-11-28T23:30:00"),
            snap("2026-11-28T22:00:00"),
        ],
        Retention(keep_hourly=2),
        NOW,
        {sid("2026-11-29T00:10:00"), sid("2026-11-28T23:59:59")},
        id="hourly-across-midnight",
    ),
    pytest.param(
        [snap("2026-11-29T00:00:00"), snap("2026-11-28T23:59:59"), snap("2026-11-27T12:00:00")],
        Retention(keep_daily=2),
        NOW,
        {sid("2026-11-29T00:00:00"), sid("2026-11-28T23:59:59")},
        id="daily-23:59:59-and-00:00:00-are-two-days",
    ),
    pytest.param(
        [snap(f"2026-11-{day}T{hour}:00:00") for day in (26, 27, 28) for hour in ("06", "12", "18")],
        Retention(keep_daily=2),
        NOW,
        {sid("2026-11-28T18:00:00"), sid("2026-11-27T18:00:00")},
        id="daily-keeps-newest-of-each-day",
    ),
    pytest.param(
        [snap(f"2026-11-{day}T{hour}:00:00") for day in (26, 27, 28) for hour in ("06", "12", "18")],
        Retention(keep_daily=3),
        NOW,
        {sid("2026-11-28T18:00:00"), sid("2026-11-27T18:00:00"), sid("2026-11-26T18:00:00")},
        id="daily-count-used-up-exactly-at-oldest-day",
    ),
    pytest.param(
        [snap(f"2026-11-{day}T{hour}:00:00") for day in (26, 27, 28) for hour in ("06", "12", "18")],
        Retention(keep_daily=4),
        NOW,
        {
            sid("2026-11-28T18:00:00"),
            sid("2026-11-27T18:00:00"),
            sid("2026-11-26T18:00:00"),
            sid("2026-11-26T06:00:00"),
        },
        id="daily-wants-more-days-than-exist-keeps-oldest",
    ),
    pytest.param(
        [
            snap("2021-01-10T12:00:00"),  # 2021-W01
            snap("2021-01-04T00:00:00"),  # 2021-W01
            snap("2021-01-03T23:59:59"),  # 2020-W53
            snap("2020-12-31T12:00:00"),  # 2020-W53
            snap("2020-12-28T00:00:00"),  # 2020-W53
            snap("2020-12-27T12:00:00"),  # 2020-W52
            snap("2020-12-21T12:00:00"),  # 2020-W52
        ],
        Retention(keep_weekly=3),
        NOW,
        {sid("2021-01-10T12:00:00"), sid("2021-01-03T23:59:59"), sid("2020-12-27T12:00:00")},
        id="weekly-2020-W53-spans-new-year",
    ),
    pytest.param(
        [
            snap("2027-01-04T00:00:00"),  # 2027-W01
            snap("2027-01-03T23:59:59"),  # 2026-W53
            snap("2026-12-31T12:00:00"),  # 2026-W53
            snap("2026-12-27T23:59:59"),  # 2026-W52
            snap("2026-12-21T00:00:00"),  # 2026-W52
            snap("2026-12-20T12:00:00"),  # 2026-W51
        ],
        Retention(keep_weekly=3),
        NOW,
        {sid("2027-01-04T00:00:00"), sid("2027-01-03T23:59:59"), sid("2026-12-27T23:59:59")},
        id="weekly-2026-W53-and-sunday-to-monday",
    ),
    pytest.param(
        [
            snap("2024-04-01T00:00:00"),
            snap("2024-03-31T23:59:59"),
            snap("2024-03-01T00:00:00"),
            snap("2024-02-29T23:59:59"),
            snap("2024-02-01T00:00:00"),
            snap("2024-01-31T23:59:59"),
            snap("2023-12-31T23:59:59"),
        ],
        Retention(keep_monthly=4),
        NOW,
        {
            sid("2024-04-01T00:00:00"),
            sid("2024-03-31T23:59:59"),
            sid("2024-02-29T23:59:59"),
            sid("2024-01-31T23:59:59"),
        },
        id="monthly-month-ends-leap-february",
    ),
    pytest.param(
        [
            snap("2025-03-01T00:00:00"),
            snap("2025-02-28T23:59:59"),
            snap("2025-02-01T00:00:00"),
            snap("2025-01-31T23:59:59"),
        ],
        Retention(keep_monthly=2),
        NOW,
        {sid("2025-03-01T00:00:00"), sid("2025-02-28T23:59:59")},
        id="monthly-february-28-non-leap",
    ),
    pytest.param(
        [
            snap("2025-06-01T00:00:00"),
            snap("2025-01-01T00:00:00"),
            snap("2024-12-31T23:59:59"),
            snap("2024-01-01T00:00:00"),
            snap("2023-07-01T00:00:00"),
        ],
        Retention(keep_yearly=2),
        NOW,
        {sid("2025-06-01T00:00:00"), sid("2024-12-31T23:59:59")},
        id="yearly-across-new-year",
    ),
    pytest.param(
        [snap("2025-06-01T00:00:00"), snap("2024-06-01T00:00:00"), snap("2024-01-01T00:00:00")],
        Retention(keep_yearly=10),
        NOW,
        {sid("2025-06-01T00:00:00"), sid("2024-06-01T00:00:00"), sid("2024-01-01T00:00:00")},
        id="yearly-wants-more-years-keeps-oldest",
    ),
    pytest.param(
        [
            snap("2020-03-10T12:00:00"),
            snap("2020-03-05T00:00:00"),
            snap("2020-03-03T12:00:00"),  # exactly 7d before the newest: inside
            snap("2020-03-03T11:59:59"),
            snap("2020-01-01T00:00:00"),
        ],
        Retention(keep_within="7d"),
        datetime(2030, 1, 1, tzinfo=UTC),  # far past the window: the window hangs off the newest
        {sid("2020-03-10T12:00:00"), sid("2020-03-05T00:00:00"), sid("2020-03-03T12:00:00")},
        id="within-7d-of-newest-not-now-inclusive",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00"), snap("2026-11-27T08:00:00"), snap("2026-11-27T07:59:59")],
        Retention(keep_within="26h"),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-27T08:00:00")},
        id="within-26h",
    ),
    pytest.param(
        [
            snap("2026-11-28T10:00:00"),
            snap("2026-11-28T09:00:00"),
            snap("2026-10-15T00:00:00"),
            snap("2026-10-01T00:00:00"),
            snap("2026-09-20T00:00:00"),
        ],
        Retention(keep_last=2, keep_monthly=2),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-28T09:00:00"), sid("2026-10-15T00:00:00")},
        id="last-or-monthly-is-a-union",
    ),
    pytest.param(
        [
            snap("2026-11-28T10:00:00"),
            snap("2026-11-27T10:00:00"),
            snap("2026-11-20T10:00:00"),
            snap("2026-06-01T10:00:00"),
            snap("2026-05-01T10:00:00"),
        ],
        Retention(keep_daily=1, keep_weekly=2, keep_within="1d"),
        NOW,
        {
            sid("2026-11-28T10:00:00"),
            sid("2026-11-27T10:00:00"),  # within 1d (inclusive)
            sid("2026-11-20T10:00:00"),  # second week
        },
        id="daily-weekly-within-union",
    ),
    pytest.param(
        [
            snap("2026-11-29T00:30:00-05:00"),  # 05:30Z on the 29th
            snap("2026-11-29T00:30:00+02:00"),  # 22:30Z on the 28th
            snap("2026-11-28T23:00:00Z"),
            snap("2026-11-28T22:00:00-05:00"),  # 03:00Z on the 29th
        ],
        Retention(keep_daily=2),
        NOW,
        {sid("2026-11-29T00:30:00-05:00"), sid("2026-11-28T23:00:00Z")},
        id="non-utc-times-bucketed-in-utc",
    ),
    pytest.param(
        [
            snap("2026-11-29T06:00:00"),
            snap("2026-11-28T11:00:00"),
            snap("2026-11-28T10:00:00"),
            snap("2026-11-27T10:00:00"),
        ],
        Retention(keep_last=1),
        datetime(2026, 11, 28, 12, tzinfo=UTC),
        {sid("2026-11-29T06:00:00"), sid("2026-11-28T11:00:00")},
        id="future-kept-and-uses-no-slot",
    ),
    pytest.param(
        [
            snap("2026-11-28T12:00:00", suspicious=True),
            snap("2026-11-28T11:00:00"),
            snap("2026-11-27T11:00:00"),
            snap("2026-11-26T00:00:00", suspicious=True),
        ],
        Retention(keep_last=1),
        NOW,
        {sid("2026-11-28T12:00:00"), sid("2026-11-28T11:00:00")},
        id="suspicious-newer-reviewed-older-forgotten",
    ),
    pytest.param(
        [
            snap("2026-11-28T10:00:00"),
            snap("2026-11-27T23:00:00", suspicious=True),
            snap("2026-11-27T10:00:00"),
            snap("2026-11-26T10:00:00"),
        ],
        Retention(keep_daily=2),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-27T23:00:00"), sid("2026-11-27T10:00:00")},
        id="suspicious-never-takes-a-daily-slot",
    ),
    pytest.param(
        [
            snap("2026-11-28T10:00:00", suspicious=True),
            snap("2026-11-27T10:00:00", suspicious=True),
            snap("2026-11-26T10:00:00"),
            snap("2026-11-25T09:59:59"),  # 1d before the newest good one, less a second
        ],
        Retention(keep_within="1d"),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-27T10:00:00"), sid("2026-11-26T10:00:00")},
        id="within-counts-from-newest-good-not-suspicious",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00", suspicious=True), snap("2026-11-27T10:00:00", suspicious=True)],
        Retention(keep_last=1),
        NOW,
        {sid("2026-11-28T10:00:00"), sid("2026-11-27T10:00:00")},
        id="only-suspicious-all-kept-for-review",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00"), snap("2026-11-27T10:00:00")],
        Retention.model_construct(),  # no rule at all (bypasses validation): the guarantee still holds
        NOW,
        {sid("2026-11-28T10:00:00")},
        id="newest-good-kept-without-rules",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00", suffix="aaaa"), snap("2026-11-28T10:00:00", suffix="bbbb")],
        Retention(keep_last=1),
        NOW,
        {sid("2026-11-28T10:00:00", suffix="bbbb")},
        id="equal-times-ordered-by-id",
    ),
    pytest.param([], Retention(keep_last=1), NOW, set(), id="empty"),
]


@pytest.mark.parametrize(("snapshots", "rules", "now", "kept"), KEPT_CASES)
def test_kept_ids(snapshots: list[SnapshotRef], rules: Retention, now: datetime, kept: set[str]) -> None:
    assert kept_ids(select(snapshots, rules, now=now)) == kept


@pytest.mark.parametrize(("snapshots", "rules", "now", "kept"), KEPT_CASES)
def test_one_decision_per_snapshot_newest_first(
    snapshots: list[SnapshotRef], rules: Retention, now: datetime, kept: set[str]
) -> None:
    decisions = select(snapshots, rules, now=now)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snapshots)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)
    assert all(d.reasons for d in decisions)


@pytest.mark.parametrize(("snapshots", "rules", "now", "kept"), KEPT_CASES)
def test_input_order_does_not_matter(snapshots: list[SnapshotRef], rules: Retention, now: datetime, kept: set[str]) -> None:
    expected = select(snapshots, rules, now=now)
    shuffled = list(snapshots)
    random.Random(7).shuffle(shuffled)
    assert select(shuffled, rules, now=now) == expected
    assert select(reversed(snapshots), rules, now=now) == expected


DAYS = [snap(f"2026-11-{day}T{hour}:00:00") for day in (27, 28) for hour in ("06", "18")]

# (snapshots, rules, now, reasons of every snapshot)
REASON_CASES = [
    pytest.param(
        DAYS,
        Retention(keep_last=2),
        NOW,
        {
            sid("2026-11-28T18:00:00"): ("last 1",),
            sid("2026-11-28T06:00:00"): ("last 2",),
            sid("2026-11-27T18:00:00"): (NO_RULE,),
            sid("2026-11-27T06:00:00"): (NO_RULE,),
        },
        id="last-positions",
    ),
    pytest.param(
        DAYS,
        Retention(keep_daily=5, keep_last=1),
        NOW,
        {
            sid("2026-11-28T18:00:00"): ("last 1", "daily 2026-11-28"),
            sid("2026-11-28T06:00:00"): (NO_RULE,),
            sid("2026-11-27T18:00:00"): ("daily 2026-11-27",),
            sid("2026-11-27T06:00:00"): ("daily 2026-11-27 (oldest snapshot)",),
        },
        id="reasons-accumulate-and-oldest-marked",
    ),
    pytest.param(
        [snap("2026-11-28T23:30:00"), snap("2021-01-03T12:00:00")],
        Retention(keep_hourly=1, keep_weekly=2, keep_monthly=2, keep_yearly=2),
        NOW,
        {
            sid("2026-11-28T23:30:00"): ("hourly 2026-11-28 23:00", "weekly 2026-W48", "monthly 2026-11", "yearly 2026"),
            sid("2021-01-03T12:00:00"): ("weekly 2020-W53", "monthly 2021-01", "yearly 2021"),
        },
        id="period-labels",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00"), snap("2026-11-27T10:00:00"), snap("2026-11-20T10:00:00")],
        Retention(keep_within="1w"),
        NOW,
        {
            sid("2026-11-28T10:00:00"): ("within 1w of newest",),
            sid("2026-11-27T10:00:00"): ("within 1w of newest",),
            sid("2026-11-20T10:00:00"): (NO_RULE,),
        },
        id="within",
    ),
    pytest.param(
        [
            snap("2026-11-29T06:00:00"),
            snap("2026-11-29T05:00:00", suspicious=True),
            snap("2026-11-28T12:00:00", suspicious=True),
            snap("2026-11-28T11:00:00"),
            snap("2026-11-26T00:00:00", suspicious=True),
        ],
        Retention(keep_last=1),
        datetime(2026, 11, 29, tzinfo=UTC),
        {
            sid("2026-11-29T06:00:00"): (FUTURE,),
            sid("2026-11-29T05:00:00"): (FUTURE, FOR_REVIEW),
            sid("2026-11-28T12:00:00"): (FOR_REVIEW,),
            sid("2026-11-28T11:00:00"): ("last 1",),
            sid("2026-11-26T00:00:00"): (SUSPICIOUS_TOO_OLD,),
        },
        id="future-and-suspicious",
    ),
    pytest.param(
        [snap("2026-11-28T10:00:00", suspicious=True), snap("2026-11-27T10:00:00")],
        Retention.model_construct(),
        NOW,
        {
            sid("2026-11-28T10:00:00"): (FOR_REVIEW,),
            sid("2026-11-27T10:00:00"): (NEWEST_GOOD,),
        },
        id="newest-good-guarantee",
    ),
]


@pytest.mark.parametrize(("snapshots", "rules", "now", "reasons"), REASON_CASES)
def test_reasons(snapshots: list[SnapshotRef], rules: Retention, now: datetime, reasons: dict[str, tuple[str, ...]]) -> None:
    assert reasons_by_id(select(snapshots, rules, now=now)) == reasons


def test_newest_good_kept_by_every_valid_rule() -> None:
    snapshots = [snap("2026-11-28T10:00:00", suspicious=True), snap("2026-11-27T10:00:00"), snap("2020-01-01T00:00:00")]
    names = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
    rule_sets = [Retention(**{name: 1}) for name in names] + [Retention(keep_within="30m")]
    for rules in rule_sets:
        decisions = select(snapshots, rules, now=NOW)
        assert sid("2026-11-27T10:00:00") in kept_ids(decisions), rules


def test_every_permutation_gives_the_same_decisions() -> None:
    snapshots = [
        snap("2026-11-28T10:00:00"),
        snap("2026-11-28T10:00:00", suffix="ffff", suspicious=True),
        snap("2026-11-27T10:00:00"),
        snap("2026-11-20T10:00:00"),
        snap("2026-10-01T00:00:00+02:00"),
    ]
    rules = Retention(keep_daily=2, keep_monthly=3)
    expected = select(snapshots, rules, now=NOW)
    for order in itertools.permutations(snapshots):
        assert select(order, rules, now=NOW) == expected


def test_plan_splits_keep_and_forget() -> None:
    snapshots = [snap("2026-11-28T10:00:00"), snap("2026-11-27T10:00:00"), snap("2026-11-26T10:00:00")]
    result = plan(snapshots, Retention(keep_last=1), now=NOW)
    assert [s.id for s in result.keep] == [sid("2026-11-28T10:00:00")]
    assert [s.id for s in result.forget] == [sid("2026-11-27T10:00:00"), sid("2026-11-26T10:00:00")]
    assert len(result.decisions) == 3


@pytest.mark.parametrize(
    ("snapshots", "now", "message"),
    [
        pytest.param(
            [SnapshotRef("src-20261128T100000Z-abcd", datetime(2026, 11, 28, 10))], NOW, "no timezone", id="naive-snapshot"
        ),
        pytest.param([snap("2026-11-28T10:00:00")], datetime(2031, 1, 1), "no timezone", id="naive-now"),
        pytest.param([snap("2026-11-28T10:00:00"), snap("2026-11-28T10:00:00")], NOW, "listed twice", id="duplicate-id"),
    ],
)
def test_bad_input_is_refused(snapshots: list[SnapshotRef], now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(snapshots, Retention(keep_last=1), now=now)
