"""Webhook: a JSON POST of the notification's summary, with the configured (secret) headers.

The body is ``{"event", "subject", "text", "report"}``; ``report`` is the notification's summary
(for a drill, the JSON report). 5xx, 408, 425 and 429 answers and network errors are retried;
other 4xx answers are not, since the same request would be refused again.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from backup.repository.retry import RetryPolicy
from lifeboat import __version__
from lifeboat.notify.base import (
    NOTIFY_RETRY,
    Delivery,
    DeliveryResult,
    Notification,
    PermanentDeliveryError,
    deliver,
    read_secret,
    secret_values,
)
from policies.model import WebhookNotifier as WebhookSettings

RETRY_STATUSES = frozenset({408, 425, 429})  # "try again later" answers below 500


class WebhookNotifier:
    """POSTs a Notification as JSON to ``settings.url``."""

    kind = "webhook"

    def __init__(
        self,
        name: str,
        settings: WebhookSettings,
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
        """Deliver ``message``; retried with backoff, never raises (see ``lifeboat.notify.base.deliver``)."""
        delivery = Delivery(
            self.name,
            self.kind,
            message.event,
            public_url(self.settings.url),
            lambda: self._post_once(message),
            secret_values(*self.settings.headers.values()),
        )
        return deliver(delivery, retry=self._retry, sleep=self._sleep)

    def _post_once(self, message: Notification) -> None:
        request = urllib.request.Request(
            self.settings.url, data=webhook_body(message), headers=self._headers(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout.total_seconds()) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the open response
            if exc.code >= 500 or exc.code in RETRY_STATUSES:
                raise
            raise PermanentDeliveryError(f"the webhook answered HTTP {exc.code} {exc.reason}") from exc

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"lifeboat/{__version__}"}
        for name, secret in self.settings.headers.items():
            value = read_secret(secret) or ""
            if "\n" in value or "\r" in value:
                raise PermanentDeliveryError(f"the value of header {name} holds a line break")
            headers[name] = value
        return headers


def webhook_body(message: Notification) -> bytes:
    """The JSON document posted for ``message``."""
    document = {"event": message.event, "subject": message.subject, "text": message.text, "report": message.summary}
    return json.dumps(document, default=str, ensure_ascii=False).encode("utf-8")


def public_url(url: str) -> str:
    """``https://host:port`` of ``url``: its path and query may hold a token (Slack-style hooks), never logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
