"""Notifications (DESIGN section 6): email, webhook, apprise (chat and paging by URL) and ping (a
dead man's switch followed by jobs, ``ping_job``), chosen by the policy's ``notify`` section.

Each notifier kind is a class in ``NOTIFIERS`` built from its policy settings. ``notify`` sends one
Notification to every notifier subscribed to its event and returns what happened; it never raises
for a delivery problem, so a notification can never change a drill's verdict. What a notification
says is written in ``lifeboat.notify.wording``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from lifeboat.notify.apprise_urls import AppriseNotifier, url_secrets
from lifeboat.notify.base import NOTIFY_RETRY, Attachment, DeliveryResult, Notification, Notifier
from lifeboat.notify.email import EmailNotifier
from lifeboat.notify.ping import PingNotifier
from lifeboat.notify.webhook import WebhookNotifier
from policies.errors import ConfigError, ConfigIssue
from policies.model import NOTIFY_EVENTS, Policy, reveal
from policies.model import AppriseNotifier as AppriseSettings
from policies.model import EmailNotifier as EmailSettings
from policies.model import PingNotifier as PingSettings
from policies.model import WebhookNotifier as WebhookSettings

__all__ = [
    "NOTIFIERS",
    "NOTIFY_RETRY",
    "AppriseNotifier",
    "Attachment",
    "DeliveryResult",
    "EmailNotifier",
    "Notification",
    "Notifier",
    "PingNotifier",
    "WebhookNotifier",
    "build_notifiers",
    "notify",
    "notify_all",
    "ping_job",
    "policy_secrets",
    "subscribed",
]

NotifierSettings = EmailSettings | WebhookSettings | AppriseSettings | PingSettings
NotifierFactory = Callable[[str, Any], Notifier]
NOTIFIERS: dict[str, NotifierFactory] = {
    "email": EmailNotifier,
    "webhook": WebhookNotifier,
    "apprise": AppriseNotifier,
    "ping": PingNotifier,
}

# Which subscriptions receive an event: a failed drill is also a drill, so ``on: [drill]`` gets it; a
# damaged state DB goes to whoever wants to hear of failures (the default ``on`` included).
RECEIVED_BY = {
    "drill-failure": ("drill", "drill-failure"),
    "state-damaged": ("state-damaged", "backup-failure", "check-failure"),
    "rto-forecast": ("rto-forecast", "drill", "drill-failure"),  # a drill's warning: its subscribers hear it
}


def build_notifiers(settings: Mapping[str, NotifierSettings], names: Iterable[str] | None = None) -> list[Notifier]:
    """Notifiers for the policy's ``notify`` section (``policy.notify``), all or only ``names``.

    Raises ConfigError naming every unknown notifier name or kind, with the known ones.
    """
    wanted = list(settings) if names is None else list(names)
    issues = []
    notifiers = []
    for name in wanted:
        config = settings.get(name)
        factory = None if config is None else NOTIFIERS.get(config.kind)
        if config is None:
            issues.append(ConfigIssue(f"notify.{name}", f"no such notifier; defined: {', '.join(settings) or 'none'}"))
        elif factory is None:
            issues.append(ConfigIssue(f"notify.{name}.kind", f"unknown kind '{config.kind}'; known: {', '.join(NOTIFIERS)}"))
        else:
            notifiers.append(factory(name, config))
    if issues:
        raise ConfigError("policy", issues)
    return notifiers


def subscribed(on: Iterable[str], event: str) -> bool:
    """True when a notifier listening to ``on`` receives ``event``."""
    return bool(set(on) & set(RECEIVED_BY.get(event, (event,))))


def notify(notifiers: Iterable[Notifier], event: str, notification: Notification) -> list[DeliveryResult]:
    """Send ``notification`` as ``event`` to every notifier subscribed to it; one result per notifier sent to.

    ValueError for an event that is not one of NOTIFY_EVENTS (a programming error, not a delivery one).
    """
    if event not in NOTIFY_EVENTS:
        raise ValueError(f"unknown event '{event}'; known events: {', '.join(NOTIFY_EVENTS)}")
    message = notification if notification.event == event else replace(notification, event=event)
    return [notifier.send(message) for notifier in notifiers if subscribed(notifier.on, event)]


def notify_all(settings: Mapping[str, NotifierSettings], notification: Notification) -> list[DeliveryResult]:
    """Build every notifier in ``settings`` (``{name: policy settings}``, e.g. a drill's chosen ones) and send
    ``notification`` as its own event to those subscribed; one result per notifier sent to.

    Each failure is already logged as ``notify.failed``: callers report the results, they need not log them again.
    """
    return notify(build_notifiers(settings), notification.event, notification)


def ping_job(settings: Mapping[str, NotifierSettings], job: str, phase: str, text: str) -> list[DeliveryResult]:
    """Ping ``phase`` (start, success, fail) of job ``job`` to every ping notifier following it; never raises."""
    pings = [PingNotifier(name, config) for name, config in settings.items() if isinstance(config, PingSettings)]
    return [result for ping in pings if ping.follows(job) and (result := ping.ping(job, phase, text)) is not None]


def policy_secrets(policy: Policy) -> list[str]:
    """Every secret of ``policy`` to mask (``Policy.secret_values``) and the secret parts of its apprise URLs."""
    found = list(policy.secret_values())
    for config in policy.notify.values():
        if isinstance(config, AppriseSettings):
            for secret in config.urls:
                with contextlib.suppress(ConfigError):
                    found += url_secrets(reveal(secret) or "")
    return found
