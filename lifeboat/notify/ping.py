"""Ping: a dead man's switch (healthchecks.io style) for scheduled and CLI jobs.

Each job the notifier follows (``jobs``: ``backup:etcd``, ``backup:*``, ``prune``, ``check``,
``drill:*``, ``janitor``, ``restore-point:*``) pings ``start`` when it begins and ``success`` or ``fail`` when it ends
(``fail``: a failed run, a suspicious snapshot, a drill FAIL or ERROR, an interrupted run), with a
line of text as the POST body. The monitoring side raises the alarm when the pings stop coming: a
backup that silently stopped running is noticed. The URLs are secrets (the check's UUID is all it
takes to ping it): logs show only ``https://host``. A ping that cannot be delivered is logged and
never changes the job's outcome.
"""

from __future__ import annotations

import fnmatch
import functools
import urllib.error
import urllib.request

from backup.doctor import Finding, probe
from backup.repository.retry import RetryPolicy
from lifeboat import __version__
from lifeboat.notify.base import (
    DeliveryResult,
    Notification,
    PermanentDeliveryError,
    RetryingNotifier,
    read_secret,
    secret_values,
)
from lifeboat.notify.webhook import RETRY_STATUSES, public_url, reachable
from policies.errors import ConfigError
from policies.model import PingNotifier as PingSettings
from policies.model import Secret, reveal

PHASES = ("start", "success", "fail")
SUFFIXES = {"start": "/start", "success": "", "fail": "/fail"}
# Short: a job waits for its start ping; a dead monitor costs it a few seconds, not a minute.
PING_RETRY = RetryPolicy(attempts=3, base_delay=1.0, max_delay=4.0)
BODY_LIMIT = 10_000  # healthchecks.io keeps the first 100 kB of a ping's body; a line of text is enough


class PingNotifier(RetryingNotifier[PingSettings]):
    """POSTs a job's start, success or fail to the matching URL; ``ping`` is what jobs call."""

    kind = "ping"

    def __init__(self, name: str, settings: PingSettings, **options: object) -> None:
        options.setdefault("retry", PING_RETRY)
        super().__init__(name, settings, **options)  # type: ignore[arg-type]

    def follows(self, job: str) -> bool:
        """True when job id ``job`` (``backup:etcd``, ``prune``...) is one of ``settings.jobs``."""
        return any(fnmatch.fnmatchcase(job, pattern) for pattern in self.settings.jobs)

    def ping(self, job: str, phase: str, text: str) -> DeliveryResult | None:
        """Ping ``phase`` (start, success, fail) of ``job`` with ``text``; None when no URL is set for it."""
        if self.url_secret(phase) is None:
            return None
        return self.send(Notification(event=phase, subject=f"{job} {phase}", text=text, summary={"job": job}))

    def url_secret(self, phase: str) -> Secret | None:
        return getattr(self.settings, phase) or self.settings.url

    def target(self) -> str:
        try:
            return public_url(reveal(self.settings.url or self.settings.success) or "")
        except ConfigError:
            return "<unreadable secret file>"

    def doctor(self) -> list[Finding]:
        """Each configured ping URL's host accepts a connection (nothing is pinged)."""
        urls = {phase: read_secret(getattr(self.settings, phase) or self.settings.url) or "" for phase in PHASES}
        return [
            probe(
                f"notifier {self.name}",
                f"ping {phase} {public_url(url)}",
                functools.partial(reachable, url, timeout=self.settings.timeout.total_seconds()),
                fix="check the ping URL and the network",
            )
            for phase, url in urls.items()
            if url
        ]

    def secrets(self) -> tuple[str, ...]:
        settings = self.settings
        return secret_values(settings.url, settings.start, settings.success, settings.fail)

    def attempt(self, message: Notification) -> None:
        phase = message.event
        explicit = getattr(self.settings, phase)
        url = read_secret(explicit) if explicit is not None else (read_secret(self.settings.url) or "") + SUFFIXES[phase]
        body = message.text[:BODY_LIMIT].encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": f"lifeboat/{__version__}"}
        request = urllib.request.Request(url or "", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout.total_seconds()) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code in RETRY_STATUSES:
                raise
            raise PermanentDeliveryError(f"the ping URL answered HTTP {exc.code} {exc.reason}") from exc


def job_id(kind: str, name: str) -> str:
    """The job id a ping follows, as ``lifeboat serve`` names its jobs: ``backup:<source>``,
    ``drill:<drill>``, ``restore-point:<name>``, ``prune``, ``check``, ``janitor``."""
    return f"{kind}:{name}" if kind in ("backup", "drill", "restore-point") else kind
