"""S3 calls: which botocore errors are worth a retry, the retry loop, bounded parallel work, and
errors in an operator's words (naming the policy field or the option to fix)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError

from backup.repository.retry import RetryPolicy, log_retry

log = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Source reads are retried here, once: botocore's own retries are off (make_client). About 2 s of
# waiting in all before a dead endpoint fails the snapshot.
SOURCE_RETRY = RetryPolicy(attempts=5, base_delay=0.25, max_delay=5.0)
_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
GONE_CODES = {"NoSuchKey", "404", "NotFound"}  # an object deleted meanwhile: skipped, not an error


def is_transient(exc: BaseException) -> bool:
    """Whether a botocore error may pass on a retry: throttling, 5xx, refused or dropped connections."""
    if isinstance(exc, ClientError):
        return error_code(exc) in _TRANSIENT_CODES or _status(exc) >= 500
    if isinstance(exc, SSLError):
        return False  # a certificate or an http/https mix-up: retrying will not fix it
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError)


def call_with_retry(
    action: Callable[[], T], *, what: str, policy: RetryPolicy = SOURCE_RETRY, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``action()``, retried with backoff and jitter while it fails transiently; the last error is raised."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except (ClientError, BotoCoreError) as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            pause = policy.delay(attempt)
            log_retry(log, "s3.retry", policy=policy, operation=what, attempt=attempt, wait=round(pause, 3), error=str(exc))
            sleep(pause)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Hints:
    """Where the user fixes what an error is about: policy fields for the source, options for a target."""

    endpoint: str
    credentials: str
    bucket: str


def explain(exc: ClientError | BotoCoreError, *, endpoint: str, bucket: str, hints: Hints) -> str:
    """A botocore error in an operator's words, naming what to fix (never a secret)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code == "NoSuchBucket":
            return f"bucket '{bucket}' does not exist at {endpoint}: create it, or fix {hints.bucket}"
        if code in _DENIED_CODES:
            return (
                f"access denied to bucket '{bucket}' at {endpoint} ({code}): check {hints.credentials} and the bucket policy"
            )
        return f"{code or 'error'} from {endpoint} (HTTP {_status(exc)}): {_message(exc)}"
    if isinstance(exc, SSLError):
        return f"TLS with {endpoint} failed ({exc}): check {hints.endpoint} (http or https) and the CA bundle"
    if isinstance(exc, BotoConnectionError):
        return f"cannot connect to {endpoint} ({exc}); is it up? check {hints.endpoint}"
    return f"{endpoint}: {exc}"


def error_code(exc: ClientError) -> str:
    """The S3 error code of ``exc`` (NoSuchKey, AccessDenied...), or ''."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def run_bounded(workers: int, items: Iterable[T], work: Callable[[T], R], on_result: Callable[[R], None]) -> None:
    """Run ``work`` over ``items`` on ``workers`` threads with at most 2 x workers queued; ``on_result``
    runs in the calling thread, in completion order. The first error cancels what is queued and is raised."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lifeboat-s3")
    pending: set[Future[R]] = set()
    try:
        for item in items:
            pending.add(pool.submit(contextvars.copy_context().run, work, item))  # see retry.failures_expected
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(future.result())
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
