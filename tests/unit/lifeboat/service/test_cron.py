"""Schedules as crontab means them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lifeboat.service.cron import next_fire_times

SATURDAY = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # 2026-11-28 is a Saturday


def fires(expression: str, count: int = 3) -> list[str]:
    return [moment.strftime("%a %Y-%m-%d %H:%M") for moment in next_fire_times(expression, now=SATURDAY, count=count)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 4 * * 0", ["Sun 2026-11-29 04:00", "Sun 2026-12-06 04:00"]),  # crontab: 0 is Sunday
        ("0 4 * * 7", ["Sun 2026-11-29 04:00", "Sun 2026-12-06 04:00"]),  # and so is 7
        ("0 4 * * 1-5", ["Mon 2026-11-30 04:00", "Tue 2026-12-01 04:00"]),
        ("0 4 * * mon,fri", ["Mon 2026-11-30 04:00", "Fri 2026-12-04 04:00"]),
        ("0 4 * * */3", ["Sun 2026-11-29 04:00", "Wed 2026-12-02 04:00"]),  # 0, 3, 6: Sun, Wed, Sat
        ("30 */6 * * *", ["Sat 2026-11-28 12:30", "Sat 2026-11-28 18:30"]),
        ("@daily", ["Sun 2026-11-29 00:00", "Mon 2026-11-30 00:00"]),
    ],
)
def test_schedules_fire_when_crontab_would(expression: str, expected: list[str]) -> None:
    assert fires(expression, 2) == expected


def test_day_of_month_and_weekday_together_fire_on_either_as_in_crontab() -> None:
    # "the 1st of the month, and every Monday": crontab ORs the two day fields
    assert fires("0 0 1 * 1") == ["Mon 2026-11-30 00:00", "Tue 2026-12-01 00:00", "Mon 2026-12-07 00:00"]
