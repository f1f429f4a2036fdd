"""Drill reports (DESIGN section 6): JSON, JUnit XML, a self-contained HTML page, a text summary,
and the mail's HTML part.

Every renderer is a pure function of a ``DrillRun`` (the HTML page and the mail also of earlier
runs, for their trends); ``write_reports`` puts the first four in a directory.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from drills.model import DrillRun
from drills.report.html import render_html, trend_runs
from drills.report.json_report import load_json, render_json
from drills.report.junit import render_junit
from drills.report.mail import render_email_html
from drills.report.text import render_text, subject_line

__all__ = [
    "REPORT_FILES",
    "load_json",
    "render_email_html",
    "render_html",
    "render_json",
    "render_junit",
    "render_text",
    "report_file_names",
    "subject_line",
    "trend_runs",
    "write_reports",
]

log = structlog.get_logger(__name__)

# kind -> file name suffix; the run id goes in front so one --report-dir can keep many runs.
REPORT_FILES = {"json": "report.json", "junit": "junit.xml", "html": "report.html", "text": "summary.txt"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def report_file_names(run: DrillRun) -> dict[str, str]:
    """``{"json": "<run-id>.report.json", "junit": ..., "html": ..., "text": ...}``."""
    stem = _UNSAFE.sub("_", run.run_id).strip("._") or "run"  # a run id must never escape the directory
    return {kind: f"{stem}.{suffix}" for kind, suffix in REPORT_FILES.items()}


def write_reports(run: DrillRun, directory: Path, history: Sequence[DrillRun] = ()) -> dict[str, Path]:
    """Write the four reports of ``run`` into ``directory`` (created if needed); return ``{kind: path}``.

    Each file is written whole or not at all (temporary file, then rename), so a reader never
    sees half a report. OSError propagates: the caller decides whether a missing report matters.
    """
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "json": render_json(run),
        "junit": render_junit(run),
        "html": render_html(run, history),
        "text": render_text(run),
    }
    written = {}
    for kind, name in report_file_names(run).items():
        written[kind] = _write_atomically(directory / name, contents[kind])
    log.info("drill.reports_written", drill=run.drill, run_id=run.run_id, directory=str(directory))
    return written


def _write_atomically(path: Path, text: str) -> Path:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        Path(temporary).chmod(0o644)  # mkstemp makes it 0600; reports hold no secret and are meant to be read
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
