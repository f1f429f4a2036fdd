"""Email over SMTP: STARTTLS (port 587) or implicit TLS (``ssl``, port 465), AUTH when configured.

The mail is multipart/mixed: a multipart/alternative text + HTML body, then the attachments (the
JSON and JUnit reports). Certificates are verified against the system's CAs; a private CA is
trusted through ``SSL_CERT_FILE``. A STARTTLS server that does not offer STARTTLS is refused,
never written to in clear text.
"""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from backup.doctor import DOCTOR_TIMEOUT, Finding, Problem, probe
from lifeboat.notify.base import (
    Notification,
    PermanentDeliveryError,
    RetryingNotifier,
    describe,
    mask,
    read_secret,
    secret_values,
)
from policies.model import EmailNotifier as EmailSettings

EVENT_HEADER = "X-Lifeboat-Event"
# RFC 5322's hard limit instead of the 78-character default: Python folds a long subject holding
# "(...)" before its first word, and the subject then reaches readers with a leading space.
MAIL_POLICY = email.policy.default.clone(max_line_length=998)


class EmailNotifier(RetryingNotifier[EmailSettings]):
    """Sends a Notification as one mail from ``settings.sender`` to every address of ``settings.to``."""

    kind = "email"

    def target(self) -> str:
        return f"{self.settings.smtp.host}:{self.settings.smtp.port}"

    def secrets(self) -> tuple[str, ...]:
        return secret_values(self.settings.smtp.password)

    def attempt(self, message: Notification) -> None:
        smtp = self.settings.smtp
        password = read_secret(smtp.password)
        mail = build_email(self.settings, message)
        timeout = smtp.timeout.total_seconds()
        context = ssl.create_default_context()
        client = (
            smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=context)
            if smtp.ssl
            else smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        )
        with client:
            try:
                if smtp.starttls:
                    client.starttls(context=context)
                if smtp.user is not None and password is not None:
                    client.login(smtp.user, password)
                client.send_message(mail, from_addr=self.settings.sender, to_addrs=list(self.settings.to))
            except smtplib.SMTPException as exc:
                raise _classify(exc) from exc

    def doctor(self) -> list[Finding]:
        """Connect, EHLO, STARTTLS and AUTH as configured, then QUIT: no mail is sent."""
        return [
            probe(
                f"notifier {self.name}",
                f"smtp {self.target()}",
                self._handshake,
                fix="check notify.*.smtp host, port, TLS and credentials",
            )
        ]

    def _handshake(self) -> str:
        smtp = self.settings.smtp
        timeout = min(smtp.timeout.total_seconds(), DOCTOR_TIMEOUT)
        context = ssl.create_default_context()
        try:
            client = (
                smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=context)
                if smtp.ssl
                else smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
            )
        except OSError as exc:
            raise Problem(f"cannot connect to {self.target()}: {describe(exc)}", "check smtp.host and smtp.port") from None
        done = ["connected"]
        with client:
            try:
                client.ehlo()
                if smtp.starttls:
                    client.starttls(context=context)
                    done.append("STARTTLS")
                password = read_secret(smtp.password)
                if smtp.user is not None and password is not None:
                    client.login(smtp.user, password)
                    done.append(f"logged in as {smtp.user}")
            except (smtplib.SMTPException, OSError) as exc:
                text = mask(describe(exc), self.secrets())
                raise Problem(
                    f"{', '.join(done)}, then: {text}", "check smtp.starttls / ssl, smtp.user and smtp.password"
                ) from None
        return ", ".join(done) + "; nothing sent"


def build_email(settings: EmailSettings, message: Notification) -> EmailMessage:
    """The mail for ``message``: text (+ HTML) alternative body, then the attachments."""
    mail = EmailMessage(policy=MAIL_POLICY)
    mail["Subject"] = message.subject
    mail["From"] = settings.sender
    mail["To"] = ", ".join(settings.to)
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2])
    mail[EVENT_HEADER] = message.event  # lets mail filters route failures apart from routine runs
    mail.set_content(message.text)
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        mail.add_attachment(
            attachment.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.name,
        )
    return mail


def _classify(exc: smtplib.SMTPException) -> Exception:
    """Which SMTP failures are worth another attempt: 4xx answers and dropped connections are."""
    if isinstance(exc, smtplib.SMTPAuthenticationError | smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError(describe(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return PermanentDeliveryError(describe(exc)) if all(code >= 500 for code in codes) else exc
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500:
        return PermanentDeliveryError(describe(exc))
    return exc
