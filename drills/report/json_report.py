"""The JSON report: ``DrillRun.to_dict`` under the versioned schema ``lifeboat.drill-report/v1``.

Keys may be added to the schema, never renamed or removed (DESIGN section 7); a reader refuses a
document of another schema rather than misread it.
"""

from __future__ import annotations

import json
from typing import Any

from drills.model import REPORT_SCHEMA, DrillRun


def render_json(run: DrillRun) -> str:
    """The run as a JSON document (indented, UTF-8 text, trailing newline)."""
    # default=str: a step's free-form ``details`` may hold a datetime or a Path; a report must not
    # fail to be written because of one.
    return json.dumps(run.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"


def load_json(text: str | bytes) -> DrillRun:
    """Read a JSON report back into a DrillRun; ValueError when it is not a readable v1 report."""
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON drill report: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"not a {REPORT_SCHEMA} report: the document is not a JSON object")
    try:
        return DrillRun.from_dict(document)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"incomplete {REPORT_SCHEMA} report: missing or malformed {exc}") from exc
