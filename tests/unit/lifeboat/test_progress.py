"""The progress bar of long transfers, drawn on a pseudo-terminal: percentage, exact final bytes,
log lines above it; and nothing at all when stderr is not a terminal."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest
import structlog

from lifeboat.logs import configure
from lifeboat.progress import terminal_progress

TOTAL = 3_141_593  # bytes: not a round figure, so the exact one is told apart from a rounded one
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # rich asks the process's own terminal, which tests do not have


@contextmanager
def terminal() -> Iterator[tuple[TextIO, list[bytes]]]:
    """A pseudo-terminal: the text stream a program writes to, and what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        yield stream, received
    finally:
        stream.close()
        reader.join(timeout=5)
        os.close(master)


def screen(received: list[bytes]) -> str:
    return ANSI.sub("", b"".join(received).decode(errors="replace")).replace("\r", "\n")


def test_a_bar_with_a_percentage_ends_at_100_percent_and_the_exact_bytes() -> None:
    with terminal() as (stream, received):
        with terminal_progress("restore models", total=TOTAL, stream=stream) as progress:
            assert progress is not None
            for _ in range(TOTAL // 100_000):
                progress(100_000)
            progress(TOTAL % 100_000)
    text = screen(received)
    assert "%" in text and "restore models" in text
    last = text.strip().splitlines()[-1]
    assert "100%" in last and f"{TOTAL} bytes" in last and "3.0/3.0 MiB" in last, last


def test_without_a_total_bytes_and_rate_only() -> None:
    with terminal() as (stream, received):
        with terminal_progress("backup models", stream=stream) as progress:
            assert progress is not None
            progress(2000)
            time.sleep(0.3)  # the rate is measured over time
            progress(3000)
    last = screen(received).strip().splitlines()[-1]
    assert "backup models done: 5000 bytes" in last and "/s" in last and "%" not in last, last


def test_log_lines_are_printed_above_the_bar_not_through_it() -> None:
    with terminal() as (stream, received):
        configure("console", stream=stream)
        try:
            with terminal_progress("restore models", total=TOTAL, stream=stream) as progress:
                assert progress is not None
                progress(1000)
                structlog.get_logger("test").warning("store.retry", attempt=1)
                progress(TOTAL - 1000)
        finally:
            logging.getLogger().handlers = []
    lines = [line for line in screen(received).splitlines() if line.strip()]
    [logged] = [line for line in lines if "store.retry" in line]
    assert "restore models" not in logged and "%" not in logged  # a line of its own
    assert "100%" in lines[-1]


def test_nothing_is_drawn_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with terminal_progress("restore models", total=TOTAL, stream=stream) as progress:
        assert progress is None
    assert stream.getvalue() == ""
