"""Byte sizes for people: the one formatter every command, plan and report uses."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB; TiB is the largest unit."""
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
