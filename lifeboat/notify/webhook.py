"""Webhook: a JSON POST of the notification's summary, with the configured (secret) headers.

The body is ``{"event", "subject", "text", "report"}``; ``report`` is the notification's summary
(for a drill, the JSON report). 5xx, 408, 425 and 429 answers and network errors are retried;
other 4xx answers are not, since the same request would be refused again.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from backup.doctor import DOCTOR_TIMEOUT, Finding, Problem, probe
from lifeboat import __version__
from lifeboat.notify.base import (
    Notification,
    PermanentDeliveryError,
    RetryingNotifier,
    read_secret,
    secret_values,
)
from policies.model import WebhookNotifier as WebhookSettings

RETRY_STATUSES = frozenset({408, 425, 429})  # "try again later" answers below 500


class WebhookNotifier(RetryingNotifier[WebhookSettings]):
    """POSTs a Notification as JSON to ``settings.url``."""

    kind = "webhook"

    def target(self) -> str:
        return public_url(self.settings.url)

    def secrets(self) -> tuple[str, ...]:
        return secret_values(*self.settings.headers.values())

    def attempt(self, message: Notification) -> None:
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

    def doctor(self) -> list[Finding]:
        """A TCP connection to the webhook's host and port (TLS handshake for https): nothing is sent."""
        return [
            probe(
                f"notifier {self.name}",
                f"webhook {self.target()}",
                self._connect,
                fix="check the webhook url and the network",
            )
        ]

    def _connect(self) -> str:
        return reachable(self.settings.url, timeout=self.settings.timeout.total_seconds())


def reachable(url: str, *, timeout: float) -> str:
    """Connect to ``url``'s host and port (and shake hands for https) without sending anything;
    says what answered. Raises Problem when nothing does."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=min(timeout, DOCTOR_TIMEOUT)) as connection:
            if parts.scheme == "https":
                ssl.create_default_context().wrap_socket(connection, server_hostname=host).close()
    except OSError as exc:
        raise Problem(f"cannot connect to {host}:{port}: {exc}") from None
    return f"{host}:{port} accepts connections" + (" and TLS" if parts.scheme == "https" else "") + "; nothing sent"


def webhook_body(message: Notification) -> bytes:
    """The JSON document posted for ``message``."""
    document = {"event": message.event, "subject": message.subject, "text": message.text, "report": message.summary}
    return json.dumps(document, default=str, ensure_ascii=False).encode("utf-8")


def public_url(url: str) -> str:
    """``https://host:port`` of ``url``: its path and query may hold a token (Slack-style hooks), never logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
