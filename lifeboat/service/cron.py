"""Cron expressions as APScheduler triggers (UTC) that fire when crontab would.

Cron expressions mean what they mean in crontab. ``CronTrigger.from_crontab`` is given them after
two corrections: APScheduler 3.x counts weekdays from Monday = 0 where crontab has Sunday = 0 (and
7), so weekdays are passed by name; and when both day-of-month and day-of-week are restricted,
crontab fires on either (an ``OrTrigger`` of the two here), where APScheduler would want both.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from policies.schedule import expand_cron

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: Sunday is 0 (and 7)


def cron_trigger(expression: str) -> BaseTrigger:
    """The APScheduler trigger (UTC) firing when crontab would fire ``expression`` (5 fields or an
    @alias, already validated by the policy). See the module docstring for the two corrections."""
    minute, hour, day, month, weekday = expand_cron(expression).split(" ")
    weekdays = _weekday_names(weekday)
    if not day.startswith("*") and not weekday.startswith("*"):
        return OrTrigger(
            [
                CronTrigger.from_crontab(f"{minute} {hour} {day} {month} *", timezone=UTC),
                CronTrigger.from_crontab(f"{minute} {hour} * {month} {weekdays}", timezone=UTC),
            ]
        )
    return CronTrigger.from_crontab(f"{minute} {hour} {day} {month} {weekdays}", timezone=UTC)


def _weekday_names(field: str) -> str:
    """A crontab day-of-week field as APScheduler weekday names (``1-5`` -> ``mon,tue,wed,thu,fri``)."""
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            low, high = 0, 7
        else:
            first, _, last = base.partition("-")
            low = _weekday_number(first)
            high = _weekday_number(last) if last else (7 if step_text else low)
        days.update(number % 7 for number in range(low, high + 1, step))
    return "*" if days == set(range(7)) else ",".join(_WEEKDAYS[number] for number in sorted(days))


def _weekday_number(text: str) -> int:
    return _WEEKDAYS.index(text.lower()) if text.lower() in _WEEKDAYS else int(text)


def next_fire_times(expression: str, *, now: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` times (UTC) at which ``expression`` fires after ``now``."""
    trigger = cron_trigger(expression)
    times: list[datetime] = []
    previous: datetime | None = None
    moment = now
    while len(times) < count:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        times.append(fire.astimezone(UTC))
        previous, moment = fire, fire + timedelta(seconds=1)
    return times
