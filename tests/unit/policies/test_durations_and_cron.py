from datetime import timedelta

import pytest

from policies.durations import format_duration, human_duration, parse_duration
from policies.schedule import expand_cron


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90), ("30m", 1800), ("26h", 93600), ("7d", 604800), ("2w", 1209600), ("1h30m", 5400), (" 2D ", 172800)],
)
def test_durations(text: str, expected: int) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)
    assert parse_duration(format_duration(timedelta(seconds=expected))) == timedelta(seconds=expected)


@pytest.mark.parametrize("text", ["", "30", "m", "1.5h", "3 days", "0m", "-1h", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_human_duration() -> None:
    assert human_duration(1.26) == "1.3s"
    assert human_duration(252) == "4m12s"
    assert human_duration(7500) == "2h05m"


@pytest.mark.parametrize(
    ("expression", "expanded"),
    [
        ("*/30 * * * *", "*/30 * * * *"),
        ("0 2 * * *", "0 2 * * *"),
        ("0   4 1-15/2 jan,JUL mon-fri", "0 4 1-15/2 jan,JUL mon-fri"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("@daily", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_valid_cron(expression: str, expanded: str) -> None:
    assert expand_cron(expression) == expanded


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 fields"),
        ("*/30 * * * * *", "has 6 fields"),
        ("60 * * * *", "minute field: 60 is out of range 0-59"),
        ("0 24 * * *", "hour field: 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("*/0 * * * *", "step '/0' must be a positive"),
        ("0 0 * smarch *", "'smarch' is not a number or a name"),
        ("10-5 * * * *", "runs backwards"),
        ("@sometimes", "has 1 field;"),
    ],
)
def test_invalid_cron(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        expand_cron(expression)
