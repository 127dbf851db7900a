"""EmailService: the older design's call shapes, delivered for real."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from fastapi_mail import MessageSchema, MessageType
from starlette.datastructures import Headers, UploadFile

from neoforge import InvalidEmail
from neoforge.service import EmailService
from tests.conftest import wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")


def _delivered(smtp_server: SmtpServer, email_id: str) -> Any:
    wait_for_status(email_id, {"sent"})
    [received] = [m for m in smtp_server.handler.messages if email_id in m.message["Message-ID"]]
    return received.message


def test_send_queued_email_with_template(smtp_server: SmtpServer) -> None:
    message = MessageSchema(
        recipients=["pat@example.com"],
        subject="Reset",
        template_body={"username": "pat", "link": "https://app.example.com/r/abc", "valid_hours": 2},
        subtype=MessageType.html,
    )
    email_id = asyncio.run(EmailService().send_queued_email(message, template_name="reset_password.html"))
    msg = _delivered(smtp_server, email_id)
    assert "https://app.example.com/r/abc" in msg.get_body(preferencelist=("plain",)).get_content()
    assert 'href="https://app.example.com/r/abc"' in msg.get_body(preferencelist=("html",)).get_content()


def test_send_queued_email_with_body_and_attachment(smtp_server: SmtpServer) -> None:
    upload = UploadFile(
        file=io.BytesIO(b"a,b\n1,2\n"), filename="report.csv", headers=Headers({"content-type": "text/csv"})
    )
    message = MessageSchema(
        recipients=["sam@example.com"],
        cc=["boss@example.com"],
        subject="Report",
        body="<p>Attached.</p>",
        subtype=MessageType.html,
        attachments=[upload],
    )
    email_id = asyncio.run(EmailService().send_queued_email(message))
    msg = _delivered(smtp_server, email_id)
    assert msg["Cc"] == "boss@example.com"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content_type() == "text/csv"


@pytest.mark.parametrize(
    ("method", "args", "expect"),
    [
        ("send_test_email", ("t@example.com",), "This is a test email"),
        ("send_reset_password_email", ("r@example.com", "rae", "https://x.example.com/r/1"), "reset"),
        ("send_new_account_email", ("n@example.com", "nia", "https://x.example.com/login"), "Welcome, nia"),
        ("send_admin_alert_email", ("ops@example.com", "disk full", {"host": "db1"}), "host: db1"),
    ],
)
def test_helpers_deliver_their_templates(
    smtp_server: SmtpServer, method: str, args: tuple[Any, ...], expect: str
) -> None:
    email_id = asyncio.run(getattr(EmailService(), method)(*args))
    msg = _delivered(smtp_server, email_id)
    assert expect in msg.get_body(preferencelist=("plain",)).get_content()
    assert msg.get_body(preferencelist=("html",)) is not None


def test_service_refuses_bad_input_before_queueing(smtp_server: SmtpServer) -> None:
    with pytest.raises(InvalidEmail, match="subject"):
        asyncio.run(EmailService().send_admin_alert_email("ops@example.com", "two\r\nlines"))
    assert smtp_server.handler.messages == []
