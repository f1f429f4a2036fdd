"""The S3 source's calls: what is worth a retry, bounded retries with backoff, and errors in an
operator's words (no server: see tests/integration/test_source_s3.py)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, SSLError

from backup.repository.retry import RetryPolicy
from backup.sources.s3.calls import Hints, call_with_retry, explain, is_transient

HINTS = Hints(endpoint="sources.m.endpoint_url", credentials="sources.m.access_key_id", bucket="sources.m.buckets")


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} said the server"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_what_is_worth_a_retry() -> None:
    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(client_error("InternalError", 500))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert not is_transient(client_error("AccessDenied", 403))
    assert not is_transient(client_error("NoSuchBucket", 404))
    assert not is_transient(SSLError(endpoint_url="https://x", error="certificate verify failed"))


def test_retries_are_bounded_with_backoff() -> None:
    waits: list[float] = []
    calls: list[int] = []
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=1.0)

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    assert call_with_retry(flaky, what="get", policy=policy, sleep=waits.append) == "ok"
    assert len(waits) == 2 and all(0 <= wait <= 0.1 * 2**number for number, wait in enumerate(waits))

    def down() -> str:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    waits.clear()
    with pytest.raises(EndpointConnectionError):
        call_with_retry(down, what="list", policy=policy, sleep=waits.append)
    assert len(waits) == 3  # four attempts

    def denied() -> str:
        raise client_error("AccessDenied", 403)

    waits.clear()
    with pytest.raises(ClientError):
        call_with_retry(denied, what="get", policy=policy, sleep=waits.append)
    assert waits == []  # a permanent error fails at once


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (client_error("NoSuchBucket", 404), ["bucket 'models' does not exist at http://minio:9000", "sources.m.buckets"]),
        (
            client_error("SignatureDoesNotMatch", 403),
            ["access denied to bucket 'models'", "SignatureDoesNotMatch", "sources.m.access_key_id"],
        ),
        (client_error("InvalidAccessKeyId", 403), ["access denied", "InvalidAccessKeyId"]),
        (
            EndpointConnectionError(endpoint_url="http://minio:9000"),
            ["cannot connect to http://minio:9000", "sources.m.endpoint_url"],
        ),
        (client_error("InternalError", 500), ["InternalError from http://minio:9000 (HTTP 500)"]),
    ],
)
def test_errors_say_what_to_fix(error: Exception, fragments: list[str]) -> None:
    message = explain(error, endpoint="http://minio:9000", bucket="models", hints=HINTS)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in message
