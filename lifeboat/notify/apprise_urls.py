"""Apprise: the team's chat and paging channels by URL (Slack, Teams, Telegram, ntfy, PagerDuty...).

Each URL is a secret: logs, errors and ``--json`` only ever show apprise's privacy form of it
(``slack://T...D/B...D/a...x/``), and every secret part of it (tokens, passwords, keys: what the
apprise plugin declares private, and what its privacy form hides) is masked wherever it appears
(``url_secrets`` feeds the log redactor). A URL that did not take is tried again; the ones that
did are not sent twice. apprise is imported when used (it takes most of a second to load).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from typing import Any
from urllib.parse import unquote

from backup.doctor import Finding, Problem, probe
from lifeboat.notify.base import Notification, PermanentDeliveryError, RetryingNotifier, mask, read_secret
from policies.errors import ConfigError
from policies.model import AppriseNotifier as AppriseSettings
from policies.model import reveal

_PARTS = re.compile(r"[/@?&=#:,]+")
SUCCESS_EVENTS = frozenset({"drill"})  # and every recovery note
_FAILURE_EVENTS = frozenset({"drill-failure", "backup-failure", "check-failure", "state-damaged"})


class AppriseNotifier(RetryingNotifier[AppriseSettings]):
    """Sends a Notification's subject and text to every URL of ``settings.urls`` through apprise."""

    kind = "apprise"

    def send(self, message: Notification) -> Any:
        self._left = list(range(len(self.settings.urls)))  # URLs not delivered yet, for this message
        return super().send(message)

    def target(self) -> str:
        return ", ".join(_public(secret) for secret in self.settings.urls)

    def doctor(self) -> list[Finding]:
        """Each URL is one apprise understands (nothing is sent: the services behind apprise URLs
        are too many kinds to reach without notifying)."""
        return [
            probe(
                f"notifier {self.name}",
                f"apprise urls[{index}] {_public(secret)}",
                functools.partial(_understood, secret),
            )
            for index, secret in enumerate(self.settings.urls)
        ]

    def secrets(self) -> tuple[str, ...]:
        found: list[str] = []
        for secret in self.settings.urls:
            with contextlib.suppress(ConfigError):
                found += url_secrets(reveal(secret) or "")
        return tuple(found)

    def attempt(self, message: Notification) -> None:
        import apprise

        failed = []
        for index in list(self._left):
            url = read_secret(self.settings.urls[index]) or ""
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
            if not plugin:
                raise PermanentDeliveryError(
                    f"urls[{index}]: apprise does not understand this URL (see https://appriseit.com/services/)"
                )
            plugin.socket_read_timeout = plugin.socket_connect_timeout = self.settings.timeout.total_seconds()
            with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as said:
                sent = plugin.notify(body=message.text, title=message.subject, notify_type=notify_type(message))
            if sent:
                self._left.remove(index)
            else:
                why = " ".join(str(said.getvalue()).split()) or "apprise reported a failure"
                failed.append(f"{plugin.url(privacy=True)}: {why}")
        if failed:
            raise OSError(mask("; ".join(failed), self.secrets()))


def notify_type(message: Notification) -> Any:
    """apprise's colour of ``message``: failure, success (a PASS, a recovery) or warning (suspicious)."""
    import apprise

    if message.summary.get("recovered") or message.event in SUCCESS_EVENTS:
        return apprise.NotifyType.SUCCESS
    if message.event in _FAILURE_EVENTS:
        return apprise.NotifyType.FAILURE
    return apprise.NotifyType.WARNING


def url_secrets(url: str) -> list[str]:
    """The parts of apprise URL ``url`` to mask: the URL itself, what its plugin declares private, and
    every part its privacy form hides. Just the URL when apprise does not understand it."""
    import apprise

    found = [url]
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True) if url else None
    if not plugin:
        return found
    tokens = {**plugin.template_tokens, **plugin.template_args}
    for key, token in tokens.items():
        if token.get("private"):
            value = getattr(plugin, token.get("map_to", key), None)
            values = value if isinstance(value, list | tuple | set) else [value]
            found += [item for item in values if isinstance(item, str)]
    shown = set(_PARTS.split(unquote(plugin.url(privacy=True))))
    found += [part for part in _PARTS.split(unquote(plugin.url(privacy=False))) if part not in shown]
    found += [part for part in _PARTS.split(unquote(url)) if part not in shown and _looks_secret(part, url)]
    return sorted({part for part in found if len(part) >= 3}, key=len, reverse=True)


def _looks_secret(part: str, url: str) -> bool:
    """A part of the URL as written that the canonical forms may spell differently: a long token."""
    return len(part) >= 8 and not part.isalpha() and "." not in part


def _public(secret: Any) -> str:
    """The privacy form of one configured URL, for logs; ``<unreadable>`` when its file cannot be read."""
    import apprise

    try:
        url = reveal(secret) or ""
    except ConfigError:
        return "<unreadable secret file>"
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    return str(plugin.url(privacy=True)).split("?", 1)[0] if plugin else url.split(":", 1)[0] + "://***"


def _understood(secret: Any) -> str:
    import apprise

    plugin = apprise.Apprise.instantiate(read_secret(secret) or "", suppress_exceptions=True)
    if not plugin:
        raise Problem("apprise does not understand this URL (see https://appriseit.com/services/)")
    return f"a {plugin.service_name} URL; nothing sent"
