"""Progress of long transfers on a terminal; silent when stderr is not a TTY (cron, CI, --json pipes)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from backup.sources.base import Progress
from policies.sizes import human_bytes


@contextmanager
def terminal_progress(label: str) -> Iterator[Progress | None]:
    """Yield a byte counter that redraws one stderr line at most twice a second, or None off a TTY."""
    if not sys.stderr.isatty():
        yield None
        return
    lock = threading.Lock()
    moved = 0
    started = last = time.monotonic()

    def advance(count: int) -> None:
        nonlocal moved, last
        with lock:
            moved += count
            now = time.monotonic()
            if now - last >= 0.5:
                last = now
                rate = moved / max(now - started, 1e-6)
                sys.stderr.write(f"\r{label}: {human_bytes(moved)} ({human_bytes(rate)}/s)   ")
                sys.stderr.flush()

    try:
        yield advance
    finally:
        if moved:
            sys.stderr.write("\n")
