"""Notifications against real servers: aiosmtpd (plain, STARTTLS + AUTH, implicit TLS) and an HTTP
server for webhooks. A delivery that cannot succeed is retried, reported, and never raised.

Backoff waits are recorded, not slept (a RecordingSleep stands in for time.sleep).
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import SmtpSink, http_serving
from report_samples import failing_run, history, passing_run

from backup.execute import free_port
from backup.repository.retry import RetryPolicy
from drills.report import render_email_html, render_json, render_junit, render_text, subject_line
from lifeboat.notify import (
    DeliveryResult,
    EmailNotifier,
    Notification,
    WebhookNotifier,
    build_notifiers,
    notify,
    notify_all,
)
from lifeboat.notify.wording import drill_notification
from policies.errors import ConfigError
from policies.model import EmailNotifier as EmailSettings
from policies.model import WebhookNotifier as WebhookSettings

pytestmark = pytest.mark.integration

SMTP_USER, SMTP_PASSWORD = "lifeboat", "correct-horse-battery"
ATTEMPTS = 3
QUICK_RETRY = RetryPolicy(attempts=ATTEMPTS, base_delay=0.5, max_delay=1.0)


class RecordingSleep:
    """Stands in for time.sleep: remembers every wait, never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def email_settings(port: int, **smtp: Any) -> EmailSettings:
    return EmailSettings.model_validate(
        {
            "kind": "email",
            "smtp": {"host": "127.0.0.1", "port": port, "starttls": False, "timeout": "10s", **smtp},
            "from": "lifeboat@example.test",
            "to": ["oncall@example.test", "audit@example.test"],
        }
    )


def email_notifier(settings: EmailSettings, sleep: RecordingSleep | None = None) -> EmailNotifier:
    return EmailNotifier("team", settings, retry=QUICK_RETRY, sleep=sleep or RecordingSleep())


# --- email -----------------------------------------------------------------------------------------


def test_drill_mail_arrives_with_subject_bodies_and_reports(smtp_inbox: SmtpSink) -> None:
    run, earlier = failing_run(), history(3)
    result = email_notifier(email_settings(smtp_inbox.port)).send(drill_notification(run, history=earlier))

    assert result == DeliveryResult("team", "email", True, 1)
    (mail,) = smtp_inbox.wait_for(1)
    assert mail["Subject"] == subject_line(run)
    assert mail["Subject"] == "[lifeboat] nightly FAIL: 3 sources (features FAIL), RTO 4m12s (objective 30m)"
    assert mail["From"] == "lifeboat@example.test"
    assert mail["X-Lifeboat-Event"] == "drill-failure"
    assert smtp_inbox.envelopes[0].rcpt_tos == ("oncall@example.test", "audit@example.test")
    assert mail.get_content_type() == "multipart/mixed"
    assert mail.get_body(preferencelist=("plain",)).get_content() == render_text(run)
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert html == render_email_html(run, earlier)  # mail-client HTML: inline styles, no SVG, failures first
    assert "<svg" not in html and "<style" not in html and "What went wrong" in html
    attachments = {part.get_filename(): part for part in mail.iter_attachments()}
    assert sorted(attachments) == [
        "nightly-20260611T040000Z-0001.junit.xml",
        "nightly-20260611T040000Z-0001.report.html",
        "nightly-20260611T040000Z-0001.report.json",
    ]
    page = attachments["nightly-20260611T040000Z-0001.report.html"]
    assert page.get_content_type() == "text/html" and b'id="rto-chart"' in page.get_payload(decode=True)
    json_part = attachments["nightly-20260611T040000Z-0001.report.json"]
    junit_part = attachments["nightly-20260611T040000Z-0001.junit.xml"]
    assert json_part.get_content_type() == "application/json"
    assert json_part.get_payload(decode=True) == render_json(run).encode("utf-8")
    assert junit_part.get_payload(decode=True) == render_junit(run).encode("utf-8")


@dataclass
class PasswordCheck:
    """An aiosmtpd authenticator accepting one user; remembers who logged in."""

    user: str
    password: str
    logins: list[str] = field(default_factory=list)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user.encode()
            and auth_data.password == self.password.encode()
        )
        if ok:
            self.logins.append(self.user)
        return AuthResult(success=ok, handled=False)


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.key)
        return context


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)  # signature, cert sign
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "smtp.crt", directory / "smtp.key")
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@contextlib.contextmanager
def smtp_controller(sink: SmtpSink, **smtp_parameters: Any) -> Iterator[SmtpSink]:
    """An aiosmtpd server of its own (TLS, AUTH...) on a free port; retries if the port got taken."""
    for attempt in range(3):
        sink.host, sink.port = "127.0.0.1", free_port()
        controller = Controller(sink, hostname=sink.host, port=sink.port, **smtp_parameters)
        try:
            controller.start()
        except OSError:
            if attempt == 2:
                raise
            continue
        try:
            yield sink
        finally:
            controller.stop()
        return


def starttls_with_auth(tls_files: TlsFiles, check: PasswordCheck) -> dict[str, Any]:
    """aiosmtpd parameters: STARTTLS required before anything, then AUTH required before MAIL."""
    return {
        "tls_context": tls_files.server_context(),
        "require_starttls": True,
        "authenticator": check,
        "auth_required": True,
    }


@pytest.fixture
def trust_test_certificate(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the self-signed certificate the way an operator trusts a private CA: SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.certificate))


@pytest.mark.usefixtures("trust_test_certificate")
def test_starttls_and_auth(tls_files: TlsFiles) -> None:
    check = PasswordCheck(SMTP_USER, SMTP_PASSWORD)
    server = starttls_with_auth(tls_files, check)
    with smtp_controller(SmtpSink(), **server) as sink:
        settings = email_settings(sink.port, starttls=True, user=SMTP_USER, password=SMTP_PASSWORD)
        result = email_notifier(settings).send(drill_notification(passing_run()))

        assert result.ok and result.attempts == 1
        (mail,) = sink.wait_for(1)
    assert check.logins == [SMTP_USER]  # the server required TLS first, then AUTH, before it took the mail
    assert mail["Subject"] == "[lifeboat] nightly PASS: 3 sources, RTO 4m12s (objective 30m)"


@pytest.mark.usefixtures("trust_test_certificate")
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_and_auth(tls_files: TlsFiles) -> None:
    check = PasswordCheck(SMTP_USER, SMTP_PASSWORD)
    # aiosmtpd only counts STARTTLS as TLS for AUTH; this whole connection is TLS, so lift that check.
    server = {
        "ssl_context": tls_files.server_context(),
        "authenticator": check,
        "auth_required": True,
        "auth_require_tls": False,
    }
    with smtp_controller(SmtpSink(), **server) as sink:
        settings = email_settings(sink.port, starttls=False, ssl=True, user=SMTP_USER, password=SMTP_PASSWORD)
        result = email_notifier(settings).send(drill_notification(passing_run()))

        assert result.ok
        sink.wait_for(1)
    assert check.logins == [SMTP_USER]


@pytest.mark.usefixtures("trust_test_certificate")
def test_a_wrong_password_fails_at_once_and_never_shows_up(tls_files: TlsFiles) -> None:
    check = PasswordCheck(SMTP_USER, SMTP_PASSWORD)
    server = starttls_with_auth(tls_files, check)
    wrong = "wrong-password-1234"
    with smtp_controller(SmtpSink(), **server) as sink, structlog.testing.capture_logs() as logs:
        settings = email_settings(sink.port, starttls=True, user=SMTP_USER, password=wrong)
        sleep = RecordingSleep()
        result = email_notifier(settings, sleep).send(drill_notification(passing_run()))

        assert not result.ok and result.attempts == 1 and sleep.waits == []  # retrying cannot fix credentials
        assert result.error is not None and "SMTPAuthenticationError" in result.error
        assert sink.messages == []
    assert [entry["event"] for entry in logs] == ["notify.failed"]
    assert wrong not in repr(logs) and wrong not in repr(result)


def test_an_untrusted_certificate_is_refused(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with smtp_controller(SmtpSink(), tls_context=tls_files.server_context(), require_starttls=True) as sink:
        result = email_notifier(email_settings(sink.port, starttls=True)).send(drill_notification(passing_run()))
        assert not result.ok and result.attempts == 1
        assert result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
        assert sink.messages == []


def test_starttls_is_required_when_configured(smtp_inbox: SmtpSink) -> None:
    """A server that does not offer STARTTLS gets nothing in clear text."""
    result = email_notifier(email_settings(smtp_inbox.port, starttls=True)).send(drill_notification(passing_run()))
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "STARTTLS" in result.error
    assert smtp_inbox.messages == []


def test_a_dead_smtp_server_is_retried_then_reported_not_raised() -> None:
    closed_port = free_port()  # nothing listens there
    sleep = RecordingSleep()
    settings = email_settings(closed_port, user=SMTP_USER, password=SMTP_PASSWORD)
    with structlog.testing.capture_logs() as logs:
        result = email_notifier(settings, sleep).send(drill_notification(failing_run()))

    assert not result.ok and result.attempts == ATTEMPTS
    assert result.error is not None and result.error.startswith(f"still failing after {ATTEMPTS} attempts: ")
    assert "Connection refused" in result.error
    assert len(sleep.waits) == ATTEMPTS - 1 and all(0 <= wait <= 1.0 for wait in sleep.waits)
    assert [entry["event"] for entry in logs] == ["notify.retry", "notify.retry", "notify.failed"]
    assert SMTP_PASSWORD not in repr(logs)


def test_an_unreadable_password_file_is_a_failed_delivery(tmp_path: Path, smtp_inbox: SmtpSink) -> None:
    settings = email_settings(smtp_inbox.port, user=SMTP_USER, password={"file": str(tmp_path / "missing")})
    result = email_notifier(settings).send(drill_notification(passing_run()))
    assert not result.ok and result.attempts == 1
    assert result.error is not None and "cannot read a secret" in result.error


# --- webhook ---------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookServer:
    """An HTTP server answering POSTs with scripted statuses (the last one repeats)."""

    url: str
    statuses: list[int]
    received: list[ReceivedRequest] = field(default_factory=list)

    def next_status(self) -> int:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


@contextlib.contextmanager
def webhook_server(*statuses: int) -> Iterator[WebhookServer]:
    state = WebhookServer("", list(statuses))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append(ReceivedRequest(self.path, dict(self.headers.items()), body))
            status = state.next_status()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
            pass

    with http_serving(Handler) as port:
        state.url = f"http://127.0.0.1:{port}"
        yield state


def webhook_settings(url: str, **extra: Any) -> WebhookSettings:
    return WebhookSettings.model_validate({"kind": "webhook", "url": url, "timeout": "5s", **extra})


def test_webhook_posts_the_report_with_secret_headers(tmp_path: Path) -> None:
    team_file = tmp_path / "team"
    team_file.write_text("ml-platform\n")
    run = failing_run()
    with webhook_server(200) as server:
        headers = {"Authorization": "Bearer tok-123456", "X-Team": {"file": str(team_file)}}
        notifier = WebhookNotifier("hook", webhook_settings(server.url + "/hooks/T0/abc", headers=headers))
        result = notifier.send(drill_notification(run))

    assert result == DeliveryResult("hook", "webhook", True, 1)
    (request,) = server.received
    assert request.path == "/hooks/T0/abc"
    assert request.headers["Authorization"] == "Bearer tok-123456"
    assert request.headers["X-Team"] == "ml-platform"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert body["event"] == "drill-failure"
    assert body["subject"] == subject_line(run)
    assert body["text"] == render_text(run)
    assert body["report"]["verdict"] == "FAIL" and body["report"]["sources"][1]["verdict"] == "FAIL"


def test_webhook_500_then_200_is_retried_and_delivered() -> None:
    sleep = RecordingSleep()
    with webhook_server(500, 200) as server:
        notifier = WebhookNotifier("hook", webhook_settings(server.url), retry=QUICK_RETRY, sleep=sleep)
        result = notifier.send(drill_notification(passing_run()))

    assert result.ok and result.attempts == 2
    assert len(server.received) == 2 and len(sleep.waits) == 1


def test_webhook_always_500_gives_a_failed_result() -> None:
    sleep = RecordingSleep()
    with webhook_server(503) as server:
        notifier = WebhookNotifier("hook", webhook_settings(server.url), retry=QUICK_RETRY, sleep=sleep)
        result = notifier.send(drill_notification(passing_run()))

    assert not result.ok and result.attempts == ATTEMPTS and len(server.received) == ATTEMPTS
    assert result.error is not None and "HTTP Error 503" in result.error


def test_webhook_404_is_not_retried() -> None:
    with webhook_server(404) as server:
        notifier = WebhookNotifier("hook", webhook_settings(server.url), retry=QUICK_RETRY, sleep=RecordingSleep())
        result = notifier.send(drill_notification(passing_run()))

    assert not result.ok and result.attempts == 1 and len(server.received) == 1
    assert result.error == "the webhook answered HTTP 404 Not Found"


def test_webhook_url_token_stays_out_of_the_logs() -> None:
    with webhook_server(200) as server, structlog.testing.capture_logs() as logs:
        WebhookNotifier("hook", webhook_settings(server.url + "/services/secret-path-token")).send(
            drill_notification(passing_run())
        )
    [sent] = logs
    assert sent["event"] == "notify.sent" and sent["target"] == server.url
    assert "secret-path-token" not in repr(logs)


# --- choosing who is told --------------------------------------------------------------------------


def test_notify_tells_only_the_subscribed_notifiers() -> None:
    with webhook_server(200) as server:
        settings = {
            "every-drill": webhook_settings(server.url + "/every-drill", on=["drill"]),
            "failures": webhook_settings(server.url + "/failures", on=["drill-failure"]),
            "backups": webhook_settings(server.url + "/backups", on=["backup-failure"]),
        }
        notifiers = build_notifiers(settings)

        passed = notify(notifiers, "drill", drill_notification(passing_run()))
        failed = notify(notifiers, "drill-failure", drill_notification(failing_run()))

    assert [result.notifier for result in passed] == ["every-drill"]
    assert [result.notifier for result in failed] == ["every-drill", "failures"]
    assert all(result.ok for result in passed + failed)
    assert [request.path for request in server.received] == ["/every-drill", "/every-drill", "/failures"]


def test_notify_all_sends_a_failed_drill_to_drill_and_failure_subscribers() -> None:
    with webhook_server(200) as server:
        settings = {
            "every-drill": webhook_settings(server.url + "/every-drill", on=["drill"]),
            "failures": webhook_settings(server.url + "/failures", on=["drill-failure"]),
            "suspicious": webhook_settings(server.url + "/suspicious", on=["suspicious"]),
        }
        results = notify_all(settings, drill_notification(failing_run()))
    assert [(result.notifier, result.ok) for result in results] == [("every-drill", True), ("failures", True)]
    assert sorted(request.path for request in server.received) == ["/every-drill", "/failures"]


def test_notify_returns_failures_instead_of_raising() -> None:
    closed = free_port()
    notifiers = [
        WebhookNotifier("hook", webhook_settings(f"http://127.0.0.1:{closed}"), retry=QUICK_RETRY, sleep=RecordingSleep()),
        email_notifier(email_settings(closed)),
    ]
    message = Notification(event="drill", subject="s", text="t")
    results = notify(notifiers, "drill-failure", message)
    assert [(result.kind, result.ok, result.attempts) for result in results] == [
        ("webhook", False, ATTEMPTS),
        ("email", False, ATTEMPTS),
    ]


def test_unknown_notifier_names_and_events_are_refused() -> None:
    settings = {"team": email_settings(25)}
    with pytest.raises(ConfigError, match=r"notify\.pager: no such notifier; defined: team"):
        build_notifiers(settings, ["team", "pager"])
    with pytest.raises(ValueError, match="unknown event 'drill-passed'"):
        notify(build_notifiers(settings), "drill-passed", Notification(event="drill", subject="s", text="t"))
