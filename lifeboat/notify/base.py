"""What every notifier shares: the message, the delivery result, the Protocol, the retry policy.

A notifier warns and never fails the job: ``send`` returns a ``DeliveryResult`` and raises nothing,
so a mail server being down can never turn a drill's verdict into something else.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import urllib.error
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from backup.doctor import Finding
from backup.repository.retry import RetryPolicy
from policies.errors import ConfigError
from policies.model import Secret, reveal

NOTIFICATIONS_ENV = "LIFEBOAT_NOTIFICATIONS"  # "off" in a backup Job's pod: the submitting service notifies

log = structlog.get_logger("lifeboat.notify")

# Declared once for every notifier: 4 attempts with full-jitter waits of at most 2, 4, 8 s, so a
# dead endpoint costs well under a minute plus its timeouts, and a server restart is ridden out.
NOTIFY_RETRY = RetryPolicy(attempts=4, base_delay=2.0, max_delay=30.0)
MASK = "***"
_MIN_SECRET = 3  # as lifeboat.logs: shorter values would mask ordinary words


@dataclass(frozen=True)
class Attachment:
    """A file sent along: its name, its bytes and its MIME type (``application/json``)."""

    name: str
    content: bytes
    mime_type: str


@dataclass(frozen=True)
class Notification:
    """One message for every notifier: mail subject and bodies, attachments, and a JSON summary.

    ``event`` is one of ``policies.model.NOTIFY_EVENTS``; ``summary`` is what a webhook posts
    (for a drill: the JSON report).
    """

    event: str
    subject: str
    text: str
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryResult:
    """How one notifier fared: ``ok``, how many attempts it took, and why it failed (secrets masked)."""

    notifier: str
    kind: str
    ok: bool
    attempts: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"notifier": self.notifier, "kind": self.kind, "ok": self.ok, "attempts": self.attempts, "error": self.error}


class Notifier(Protocol):
    """A configured notification channel (email, webhook)."""

    name: str  # the policy's name for it, e.g. ``team``
    kind: str
    on: tuple[str, ...]  # the events it wants (policies.model.NOTIFY_EVENTS)

    def send(self, message: Notification) -> DeliveryResult:
        """Deliver ``message`` with retries; never raise."""
        ...

    def doctor(self) -> list[Finding]:
        """Check the channel without sending anything (``lifeboat doctor``); never raise."""
        ...


class _Subscribed(Protocol):
    @property
    def on(self) -> Sequence[str]: ...


Settings = TypeVar("Settings", bound=_Subscribed)  # a notifier's policy settings: the events it wants


class RetryingNotifier(Generic[Settings]):
    """How every kind sends: one ``deliver`` of ``attempt`` under the shared retry policy. A kind
    says where it sends (``target``, for logs), what to mask (``secrets``) and how one try goes."""

    kind: str  # set by each kind

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        retry: RetryPolicy = NOTIFY_RETRY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.settings = settings
        self.on = tuple(settings.on)
        self._retry = retry
        self._sleep = sleep

    def send(self, message: Notification) -> DeliveryResult:
        """Deliver ``message``; retried with backoff, never raises (see ``deliver``)."""
        delivery = Delivery(
            self.name, self.kind, message.event, self.target(), lambda: self.attempt(message), self.secrets()
        )
        return deliver(delivery, retry=self._retry, sleep=self._sleep)

    def target(self) -> str:
        raise NotImplementedError

    def secrets(self) -> tuple[str, ...]:
        raise NotImplementedError

    def attempt(self, message: Notification) -> None:
        """One try; raises OSError (retried) or PermanentDeliveryError."""
        raise NotImplementedError


class PermanentDeliveryError(Exception):
    """A failure that retrying cannot fix (refused credentials, a 4xx answer, an unreadable secret)."""


@dataclass(frozen=True)
class Delivery:
    """One send to carry out: who sends, where to (for logs: never a secret), and the attempt itself."""

    notifier: str
    kind: str
    event: str
    target: str
    attempt: Callable[[], None]
    secrets: tuple[str, ...] = ()


def deliver(delivery: Delivery, *, retry: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> DeliveryResult:
    """Run ``delivery.attempt`` until it succeeds, fails permanently, or ``retry.attempts`` are spent.

    OSError (refused or dropped connections, timeouts, SMTP and HTTP errors) is retried with
    backoff; PermanentDeliveryError and an untrusted certificate are not; anything else is a bug
    and is logged with its traceback. Nothing is raised: the outcome is the returned result.
    """
    # "trigger", not "event": structlog keeps "event" for the log event's own name.
    where = {"notifier": delivery.notifier, "kind": delivery.kind, "trigger": delivery.event, "target": delivery.target}
    for attempt in range(1, retry.attempts + 1):
        try:
            delivery.attempt()
        except PermanentDeliveryError as exc:
            return _failed(delivery, attempt, mask(str(exc), delivery.secrets), where)
        except OSError as exc:
            error = mask(describe(exc), delivery.secrets)
            if untrusted_certificate(exc):
                return _failed(delivery, attempt, error, where)
            if attempt == retry.attempts:
                return _failed(delivery, attempt, f"still failing after {attempt} attempts: {error}", where)
            wait = retry.delay(attempt)
            log.warning("notify.retry", **where, attempt=attempt, wait=round(wait, 3), error=error)
            sleep(wait)
        except Exception as exc:  # a notifier must never change a verdict: report a bug, do not raise it
            error = mask(describe(exc), delivery.secrets)
            log.error("notify.crashed", **where, attempt=attempt, error=error, exc_info=True)
            return DeliveryResult(delivery.notifier, delivery.kind, False, attempt, f"internal error: {error}")
        else:
            log.info("notify.sent", **where, attempts=attempt)
            return DeliveryResult(delivery.notifier, delivery.kind, True, attempt)
    raise AssertionError("unreachable: the loop returns on its last attempt")


def _failed(delivery: Delivery, attempts: int, error: str, where: dict[str, str]) -> DeliveryResult:
    # Logged here and only returned from here: the caller reports the result, it does not re-log it.
    log.error("notify.failed", **where, attempts=attempts, error=error)
    return DeliveryResult(delivery.notifier, delivery.kind, False, attempts, error)


def untrusted_certificate(exc: OSError) -> bool:
    """True when TLS refused the server's certificate: that stays so until someone fixes a CA or a name."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ssl.SSLCertVerificationError)


def describe(exc: BaseException) -> str:
    """``ConnectionRefusedError: [Errno 111] Connection refused``; the type alone when there is no text."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (longest first: one may contain another)."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def read_secret(secret: Secret | None) -> str | None:
    """The secret's value; PermanentDeliveryError when its file cannot be read (retrying will not help)."""
    try:
        return reveal(secret)
    except ConfigError as exc:
        raise PermanentDeliveryError(f"cannot read a secret: {exc}") from exc


def secret_values(*secrets: Secret | None) -> tuple[str, ...]:
    """The readable values among ``secrets``, to mask in error texts (an unreadable one has no value to leak)."""
    values = []
    for secret in secrets:
        with contextlib.suppress(ConfigError):
            values.append(reveal(secret) or "")
    return tuple(value for value in values if value)
