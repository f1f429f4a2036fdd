"""Log lines never carry secrets: by field name, by value, inside exception text."""

from __future__ import annotations

import io
import json
import logging

import structlog

from lifeboat.logs import configure


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_mask_secret_fields_and_values() -> None:
    stream = io.StringIO()
    redactor = configure("json", stream=stream)
    redactor.add(["hunter2-pw", "ab"])  # too short a secret is not masked: it would eat ordinary words
    log = structlog.get_logger("test")
    log.info(
        "source.connected",
        password="hunter2-pw",
        secret_access_key="AKIAxyz",
        access_key="k",
        url="clickhouse://backup:hunter2-pw@ch-1:9000",
        key="models/a.bin",
        nested={"token": "t0k", "note": "uses hunter2-pw"},
    )
    [line] = lines(stream)
    assert line["event"] == "source.connected" and line["level"] == "info" and "timestamp" in line
    assert line["password"] == line["secret_access_key"] == line["access_key"] == "***"
    assert line["url"] == "clickhouse://backup:***@ch-1:9000"
    assert line["key"] == "models/a.bin"  # an object key is not a secret
    assert line["nested"] == {"token": "***", "note": "uses ***"}
    assert "hunter2" not in stream.getvalue()


def test_exception_text_is_masked() -> None:
    stream = io.StringIO()
    redactor = configure("json", stream=stream)
    redactor.add(["s3cret-value"])
    log = structlog.get_logger("test")
    try:
        raise RuntimeError("login failed for s3cret-value")
    except RuntimeError:
        log.exception("backup.failed")
    [line] = lines(stream)
    assert "RuntimeError" in line["exception"]
    assert "s3cret-value" not in stream.getvalue()


def test_library_logs_through_stdlib_are_masked_too() -> None:
    stream = io.StringIO()
    redactor = configure("json", stream=stream)
    redactor.add(["lib-secret"])
    logging.getLogger("some.library").warning("retrying with lib-secret")
    [line] = lines(stream)
    assert line["event"] == "retrying with ***" and line["logger"] == "some.library"


def test_console_format_when_asked() -> None:
    stream = io.StringIO()
    configure("console", stream=stream)
    structlog.get_logger("test").info("snapshot.completed", source="k8s-etcd", password="pw-123")
    text = stream.getvalue()
    assert "snapshot.completed" in text and "k8s-etcd" in text and "pw-123" not in text
    assert not text.startswith("{")


def test_default_is_json_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure(None, stream=stream)
    structlog.get_logger("test").info("hello")
    assert lines(stream)[0]["event"] == "hello"
