"""Progress of long transfers on a terminal (rich's progress bar); nothing at all when stderr is not
a TTY (cron, CI, --json pipes).

With a known total (a restore: the snapshot's size) the bar shows bytes, rate, percentage and time
left; without one (a backup) bytes and rate. Log lines and messages written meanwhile are printed
above the bar, never through it. When the transfer ends the bar shows the exact bytes moved (and
100% when it succeeded)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from backup.sources.base import Progress as ProgressCallback

if TYPE_CHECKING:
    from rich.console import Console

REFRESHES_PER_SECOND = 4


@contextmanager
def terminal_progress(
    label: str, *, total: int | None = None, stream: TextIO | None = None
) -> Iterator[ProgressCallback | None]:
    """Yield a byte counter drawing a progress bar on ``stream`` (stderr), or None off a TTY.
    ``total``: the bytes expected, when known (a percentage and time left are shown then)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        yield None
        return
    # rich only on a terminal: a cron job or a --json pipe does not import it (issue 22: start-up)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(file=stream, stderr=stream is sys.__stderr__)
    known = bool(total)
    columns: list[ProgressColumn] = [TextColumn("{task.description}")]
    if known:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
    if known:
        columns.append(TimeRemainingColumn())
    bar = Progress(
        *columns, console=console, refresh_per_second=REFRESHES_PER_SECOND, redirect_stdout=False, redirect_stderr=True
    )
    task = bar.add_task(label, total=total if known else None)
    lock = threading.Lock()
    moved = 0

    def advance(count: int) -> None:
        nonlocal moved
        with lock:
            moved += count
        bar.advance(task, count)

    succeeded = False
    started = time.monotonic()
    with bar, _logs_above(console, stream):
        try:
            yield advance
            succeeded = True
        finally:
            # the exact figure: the bytes moved, and when it succeeded they are the whole (100%)
            # even if they differ a little from the snapshot's size, which counts entries only
            ended = "done" if succeeded else "stopped"
            final_total = moved if succeeded else total  # a change of total resets rich's rate: given below
            bar.update(task, completed=moved, total=final_total, description=f"{label} {ended}: {moved} bytes")
            for shown in bar.tasks:
                if shown.id == task:
                    shown.finished_speed = moved / max(time.monotonic() - started, 1e-6)  # the whole run's rate
            bar.refresh()


@contextmanager
def _logs_above(console: Console, stream: TextIO) -> Iterator[None]:
    """Route the log handlers that write to ``stream`` through the console, so that each log line
    is printed above the bar instead of over it."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream
    ]
    from rich.file_proxy import FileProxy

    proxy = FileProxy(console, stream)
    for handler in handlers:
        handler.setStream(proxy)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(stream)
