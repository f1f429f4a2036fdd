"""SMTP (aiosmtpd): a multipart mail with an attachment arrives whole."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

pytestmark = pytest.mark.integration

REPORT_CSV = b"step,status,seconds\nrestore,ok,1.25\nverify,ok,0.50\n"


def build_report_mail() -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "Lifeboat drill: etcd-prod PASSED ✓"
    message["From"] = "lifeboat@example.test"
    message["To"] = "oncall@example.test"
    message.set_content("Drill passed.\nAll 3 steps ok.\n")
    message.add_alternative("<html><body><p>Drill <b>passed</b>.</p></body></html>\n", subtype="html")
    message.add_attachment(REPORT_CSV, maintype="text", subtype="csv", filename="drill-report.csv")
    return message


def test_multipart_mail_with_attachment_arrives(smtp_inbox) -> None:
    with smtplib.SMTP(smtp_inbox.host, smtp_inbox.port, timeout=10) as smtp:
        smtp.send_message(build_report_mail(), to_addrs=["oncall@example.test", "audit@example.test"])

    (received,) = smtp_inbox.wait_for(1, timeout=5)
    assert received["Subject"] == "Lifeboat drill: etcd-prod PASSED ✓"
    assert smtp_inbox.envelopes[0].rcpt_tos == ("oncall@example.test", "audit@example.test")
    assert received.get_body(preferencelist=("plain",)).get_content() == "Drill passed.\nAll 3 steps ok.\n"
    assert "Drill <b>passed</b>." in received.get_body(preferencelist=("html",)).get_content()
    attachments = list(received.iter_attachments())
    assert [part.get_filename() for part in attachments] == ["drill-report.csv"]
    assert attachments[0].get_content_type() == "text/csv"
    assert attachments[0].get_payload(decode=True) == REPORT_CSV
