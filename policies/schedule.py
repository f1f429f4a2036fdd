"""Cron expressions: five fields (minute hour day-of-month month day-of-week) or an @alias.

Validation only; the service turns a valid expression into a trigger. Kept here, without a
scheduler import, so that ``policy validate`` runs with nothing but the policy layer.
"""

from __future__ import annotations

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# name, lowest, highest, names (index + offset = value)
_FIELDS: list[tuple[str, int, int, dict[str, int]]] = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day-of-week", 0, 7, {name: i for i, name in enumerate(_DAYS)}),
]


def expand_cron(expression: str) -> str:
    """Return the five-field form of ``expression`` (aliases expanded); raise ValueError if invalid."""
    text = " ".join(expression.split())
    text = _ALIASES.get(text.lower(), text)
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"'{expression}' has {len(fields)} field{'s' if len(fields) != 1 else ''}; a cron expression has 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *', or an alias like @daily"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            _check_item(item, name, low, high, names)
    return text


def _check_item(item: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    base, _, step = item.partition("/")
    if step and not (step.isdigit() and int(step) > 0):
        raise ValueError(f"{name} field: step '/{step}' must be a positive whole number")
    if base == "*":
        return
    start_text, dash, end_text = base.partition("-")
    start = _value(start_text, name, low, high, names)
    if dash:
        end = _value(end_text, name, low, high, names)
        if end < start:
            raise ValueError(f"{name} field: range '{base}' runs backwards")


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ValueError(f"{name} field: '{text}' is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{name} field: {number} is out of range {low}-{high}")
    return number
