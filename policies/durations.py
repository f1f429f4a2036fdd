"""Durations as people write them in a policy file: ``90s``, ``30m``, ``26h``, ``7d``, ``2w``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """Parse ``'26h'`` or ``'1h30m'`` into a timedelta; raise ValueError with a plain message."""
    compact = text.strip().replace(" ", "").lower()
    if not _WHOLE.fullmatch(compact):
        raise ValueError(f"'{text}' is not a duration: write a number and a unit, like 90s, 30m, 26h, 7d or 2w")
    seconds = sum(int(number) * _UNITS[unit] for number, unit in _PART.findall(compact))
    if seconds == 0:
        raise ValueError(f"'{text}' is a zero duration")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration, e.g. ``timedelta(hours=26)`` -> ``'1d2h'``."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("w", _UNITS["w"]), ("d", _UNITS["d"]), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def human_duration(seconds: float) -> str:
    """Seconds for a report line: ``4m12s``, ``1.3s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
