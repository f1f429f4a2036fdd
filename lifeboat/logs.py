"""structlog set-up, in this one module: console on a terminal, JSON otherwise, secrets masked.

Every log line, from Lifeboat or from a library through the standard ``logging`` module, passes the
``Redactor``: fields named like a secret are replaced by ``***``, and so is any configured secret
value wherever it appears, exception text included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

# structlog imports rich, when it is installed, at its own import, for pretty tracebacks: 45 ms of
# every start (issue 22). Lifeboat renders tracebacks as plain text (format_exc_info below) and uses
# rich only for a progress bar on a terminal, so structlog is imported here as if rich were absent
# (a None in sys.modules makes `import rich` raise ImportError). lifeboat/cli.py imports this module
# before any command's, so that this import of structlog is the first (tests/unit/lifeboat/test_startup.py).
_hide_rich = "rich" not in sys.modules
if _hide_rich:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _hide_rich:
        del sys.modules["rich"]

MASK = "***"
SECRET_FIELD = re.compile(
    r"pass(word|wd|phrase)?$|secret|token|credential|authorization|(^|_)(api|access|private|secret|auth|sse)_?key$",
    re.IGNORECASE,
)
_MIN_SECRET = 3  # shorter values would mask ordinary words; none of ours are that short in practice
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "kubernetes", "apscheduler.executors")
# clickhouse-driver logs every connection failure with its traceback, and then raises it: Lifeboat
# reports the raised error once, clearly; the driver's own account of it is left out.
_DRIVERS_THAT_RAISE = ("clickhouse_driver",)

LogFormat = Literal["console", "json"]


class Redactor:
    """A structlog processor that masks secrets; learns secret values as policies load."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets) | {s for s in secrets if len(s) >= _MIN_SECRET}
        self._secrets = sorted(known, key=len, reverse=True)  # longest first: a secret may contain another

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, MASK)
        return value

    def value(self, value: Any, key: str = "") -> Any:
        if key and SECRET_FIELD.search(key) and value not in (None, ""):
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {key: self.value(value, key) for key, value in event_dict.items()}


def configure(log_format: LogFormat | None = None, *, stream: TextIO | None = None, level: int = logging.INFO) -> Redactor:
    """Route structlog and stdlib logging to ``stream`` (stderr); return the redactor to feed secrets to.

    ``log_format`` None picks console on a terminal and JSON otherwise (a service, a cron job, a pipe).
    """
    stream = stream or sys.stderr
    redactor = Redactor()
    json_output = log_format == "json" or (log_format is None and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # exceptions become text before the redactor reads them
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _DRIVERS_THAT_RAISE:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return redactor
