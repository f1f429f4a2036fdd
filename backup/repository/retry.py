"""The retry policy of the repository's store calls, declared once.

Stores raise ``TransientStoreError`` for what may pass (throttling, 5xx, dropped connections) and
never retry themselves; ``RetryingStore`` retries those with capped exponential backoff and full
jitter, a bounded number of times. Anything else fails at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

import structlog

from backup.repository.store import ObjectInfo, Store, TransientStoreError

T = TypeVar("T")
log = structlog.get_logger(__name__)


# Set while a drill's fault runs (drills/runner.py): failures are injected on purpose then, so
# retries are logged at debug. Worker threads see it when their work is submitted through
# ``contextvars.copy_context().run`` (backup/sources/s3/calls.py run_bounded).
_FAILURES_EXPECTED: contextvars.ContextVar[bool] = contextvars.ContextVar("lifeboat_failures_expected", default=False)


@contextlib.contextmanager
def failures_expected() -> Iterator[None]:
    """Within: retries are expected (a fault injected the failures) and logged at debug, not warning."""
    token = _FAILURES_EXPECTED.set(True)
    try:
        yield
    finally:
        _FAILURES_EXPECTED.reset(token)


def log_retry(logger: Any, event: str, *, policy: RetryPolicy | None = None, **fields: Any) -> None:
    """Log one retry: a warning (a store or source in trouble), or debug when the failure was
    expected (``policy.expected_failures`` or within ``failures_expected()``)."""
    expected = _FAILURES_EXPECTED.get() or (policy is not None and policy.expected_failures)
    (logger.debug if expected else logger.warning)(event, **fields)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2  # seconds before the second attempt, doubling each time
    max_delay: float = 10.0
    # Failures injected on purpose (a drill's flaky-storage fault): their retries are logged at debug,
    # so that a passing drill does not read like a struggling store. The final failure is raised either way.
    expected_failures: bool = False

    def delay(self, attempt: int) -> float:
        """Full jitter: a random wait up to the capped exponential bound."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


DEFAULT_RETRY = RetryPolicy()


class RetryingStore:
    """Wraps a store; every call is retried on TransientStoreError according to ``policy``."""

    def __init__(self, inner: Store, policy: RetryPolicy = DEFAULT_RETRY, *, sleep: Callable[[float], None] = time.sleep):
        self.inner = inner
        self.url = inner.url
        self.policy = policy
        self._sleep = sleep

    def _call(self, what: str, key: str, action: Callable[[], T]) -> T:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return action()
            except TransientStoreError as exc:
                self._wait_or_raise(what, key, attempt, exc)
        raise AssertionError("unreachable")

    def _wait_or_raise(self, what: str, key: str, attempt: int, exc: TransientStoreError) -> None:
        """After failed ``attempt``: wait out the backoff, or raise once the attempts are spent."""
        if attempt == self.policy.attempts:
            raise TransientStoreError(f"{what} {key}: still failing after {attempt} attempts: {exc}") from exc
        wait = self.policy.delay(attempt)
        log_retry(
            log,
            "store.retry",
            policy=self.policy,
            operation=what,
            key=key,
            attempt=attempt,
            wait=round(wait, 3),
            error=str(exc),
        )
        self._sleep(wait)

    def put(self, key: str, stream: BinaryIO) -> None:
        start = stream.tell()

        def put_from_start() -> None:
            stream.seek(start)
            self.inner.put(key, stream)

        self._call("put", key, put_from_start)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        # A stream that breaks half-way cannot be resumed by the caller, so read it whole here:
        # repository objects are chunk-sized.
        def read() -> bytes:
            with self.inner.open(key) as stream:
                return stream.read()

        yield io.BytesIO(self._call("get", key, read))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call("get", key, lambda: self.inner.get_range(key, offset, length))

    def exists(self, key: str) -> bool:
        return self._call("exists", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """The inner listing, streamed; a transient failure part-way goes on after the last key
        given (stores list in key order), so memory stays at one page whatever the repository's
        size. The attempts are counted since the last key that came through."""
        last, attempt = start_after, 1
        while True:
            try:
                for info in self.inner.list(prefix, start_after=last):
                    yield info
                    last, attempt = info.key, 1
                return
            except TransientStoreError as exc:
                self._wait_or_raise("list", last or prefix, attempt, exc)
                attempt += 1

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def remove_incomplete(self, before: datetime) -> int:
        return self._call("remove incomplete writes", "", lambda: self.inner.remove_incomplete(before))
