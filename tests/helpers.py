"""Reusable test helpers (not fixtures): environment checks, log capture, in-process test servers."""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.server
import importlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

INSTALL_HINT = "apt-get install etcd-server etcd-client clickhouse-server clickhouse-client"
PIP_HINT = "pip install -e '.[test]'"
LOG_TAIL_LINES = 40


def in_ci() -> bool:
    """True when the CI environment variable is "true": missing tools then fail instead of skipping."""
    return os.environ.get("CI") == "true"


def missing_requirement(message: str) -> None:
    """Fail the test in CI, skip it elsewhere; ``message`` says what is missing and how to get it."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binaries(*names: str, hint: str = INSTALL_HINT) -> None:
    """Skip (or fail in CI) unless every binary in ``names`` is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        missing_requirement(f"not on PATH: {', '.join(missing)}; install with: {hint}")


def on_both_s3_servers() -> pytest.MarkDecorator:
    """Run the test on moto and on Ceph RGW (its ``s3_server`` fixture, and everything built on it).

    There is no xfail here: CI counts an xfail as a skip. A difference between the servers is
    recorded by a test of its own that passes on the server that differs, and the tests that need
    the other behaviour run where it exists (see test_source_s3.py)."""
    servers = [pytest.param("moto", id="moto"), pytest.param("rgw", id="rgw")]
    return pytest.mark.parametrize("s3_server", servers, indirect=True, scope="session")


def require_module(name: str) -> ModuleType:
    """Import and return module ``name``; skip (or fail in CI) if it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing_requirement(f"cannot import {name} ({exc}); install with: {PIP_HINT}")
        raise  # unreachable: missing_requirement always raises


class ServerLogs:
    """Where fixtures register the logs of the servers they started, for failure reports."""

    def __init__(self) -> None:
        self._tails: dict[str, Callable[[int], str]] = {}

    def register(self, name: str, tail: Callable[[int], str]) -> None:
        """Register ``tail(lines) -> str`` under ``name`` (a later registration replaces it)."""
        self._tails[name] = tail

    def tails(self, lines: int = LOG_TAIL_LINES) -> Iterator[tuple[str, str]]:
        """Yield ``(name, text)`` for every registered log that has any text."""
        for name, tail in list(self._tails.items()):
            text = tail(lines)
            if text:
                yield name, text


class CapturedLog(logging.Handler):
    """Keeps the last lines logged by an in-process server's logger."""

    def __init__(self, logger_name: str, *, keep: int = 1000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.logger = logging.getLogger(logger_name)
        self._lines: deque[str] = deque(maxlen=keep)
        self._previous_level = self.logger.level
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def attach(self) -> CapturedLog:
        """Start capturing; also lowers the logger's level to this handler's if needed."""
        self.logger.addHandler(self)
        if self.logger.level == logging.NOTSET or self.logger.level > self.level:
            self.logger.setLevel(self.level)
        return self

    def detach(self) -> None:
        """Stop capturing and restore the logger's level."""
        self.logger.removeHandler(self)
        self.logger.setLevel(self._previous_level)

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` captured lines."""
        return "\n".join(list(self._lines)[-lines:])


@dataclass(frozen=True)
class SmtpEnvelope:
    """What the SMTP client said outside the message: MAIL FROM and RCPT TO."""

    mail_from: str
    rcpt_tos: tuple[str, ...]


@dataclass
class SmtpSink:
    """Collects every message an aiosmtpd server receives (use as its handler)."""

    host: str = ""
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[SmtpEnvelope] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition, repr=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: parse the DATA into an EmailMessage and store it.

        SMTP carries CRLF line ends; they are turned into ``\n`` as a mail client would show them.
        """
        wire = envelope.original_content.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(wire, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._arrived:
            self.messages.append(message)
            self.envelopes.append(SmtpEnvelope(envelope.mail_from, tuple(envelope.rcpt_tos)))
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[EmailMessage]:
        """Wait until at least ``count`` messages arrived; return them all. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} mail(s) at {self.host}:{self.port} within {timeout:g}s, got {len(self.messages)}"
                    )
                self._arrived.wait(remaining)
            return list(self.messages)

    def clear(self) -> None:
        """Forget every message received so far."""
        with self._arrived:
            self.messages.clear()
            self.envelopes.clear()


def init_repository(config: Path) -> Path:
    """Make ``config``'s repository as `lifeboat repo init` does, unless it is there already (only
    `repo init` creates one: `backup run` and the service refuse a missing repository). Returns
    ``config``, to wrap a policy's ``write``."""
    from backup.repository import RepositoryNotFound, open_repository
    from backup.repository import init_repository as create
    from policies.loader import load_policy

    settings = load_policy(config).repository
    try:
        open_repository(settings).close()
    except RepositoryNotFound:
        create(settings).close()
    return config


def flip_chunk_byte(repository_root: Path, ref: Any) -> None:
    """Flip one byte of a chunk's stored bytes on disk: in its own object, or in its range of a pack
    (``ref``: a manifest.ChunkRef of a repository in a local directory)."""
    path = repository_root / ref.key
    raw = bytearray(path.read_bytes())
    start, length = (ref.offset, ref.length) if ref.pack else (0, len(raw))
    raw[start + length // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def rewrite_manifest(repository: Any, header: Any) -> None:
    """Store ``header`` (a manifest.SnapshotHeader) as its snapshot's manifest in ``repository``, in
    place of the one the backup wrote, encoded as the repository encodes it: a forger using the
    tool's own encoding, whom only the checks on what the manifest says can catch."""
    from backup.repository.manifest import manifest_key
    from backup.repository.store import put_bytes

    key = manifest_key(header.source, header.id)
    put_bytes(repository.store, key, repository.codec.encode(header.to_json(), name=key))


@contextlib.contextmanager
def http_serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """``handler`` answering on a free loopback port, in a thread, until the block ends; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
