"""send_email end to end: real Redis, real SMTP server, Celery's in-process worker."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from neoforge.processes import wait_until
from neoforge.retry import retry_delay
from tests.conftest import wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")


def _one(smtp_server: SmtpServer, subject: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = smtp_server.handler.by_subject(subject)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no message with subject {subject!r} reached the SMTP server")


def test_delivered_content(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    pdf = b"%PDF-1.4 fake but real bytes \x00\x01\x02"
    result = send_email.delay(
        to=["alice@example.com"],
        cc=["carol@example.com"],
        bcc=["bob@example.com"],
        reply_to=["support@example.com"],
        subject="Your invoice",
        template="test_email",
        context={"name": "Alice <admin>"},
        headers={"X-Campaign": "c-42", "List-Unsubscribe": "<mailto:unsub@example.com>"},
        attachments=[
            {
                "filename": "invoice.pdf",
                "content": base64.b64encode(pdf).decode(),
                "content_type": "application/pdf",
            }
        ],
    )
    record = wait_for_status(result.id, {"sent"})
    [received] = _one(smtp_server, "Your invoice")
    msg = received.message

    assert record["attempts"] == 1
    assert received.mail_from == "noreply@neoforge.example.com"
    assert sorted(received.rcpt_tos) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert msg["To"] == "alice@example.com"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Bcc"] is None and b"bob@example.com" not in received.raw
    assert msg["Reply-To"] == "support@example.com"
    assert msg["From"] == "NeoForge Tests <noreply@neoforge.example.com>"
    assert msg["X-Campaign"] == "c-42"
    assert result.id in msg["Message-ID"]

    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    # Autoescape: escaped in HTML, verbatim in plain text.
    assert "Hello Alice <admin>," in text.get_content()
    assert "Hello Alice &lt;admin&gt;," in html.get_content()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf


def test_text_only_and_html_only(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    a = send_email.delay(to=["a@example.com"], subject="plain only", text="just text")
    b = send_email.delay(to=["b@example.com"], subject="html only", html="<p>just html</p>")
    wait_for_status(a.id, {"sent"})
    wait_for_status(b.id, {"sent"})
    [plain] = _one(smtp_server, "plain only")
    [html] = _one(smtp_server, "html only")
    assert plain.message.get_body(preferencelist=("plain",)).get_content().strip() == "just text"
    assert html.message.get_body(preferencelist=("html",)).get_content().strip() == "<p>just html</p>"


def test_transient_failure_is_retried_with_backoff_from_settings(smtp_server: SmtpServer) -> None:
    from neoforge.settings import get_settings
    from tasks import send_email

    smtp_server.handler.data_replies.extend(["451 4.3.0 Try again later"] * 2)
    result = send_email.delay(to=["retry@example.com"], subject="flaky", text="hello")
    record = wait_for_status(result.id, {"sent"})

    assert record["attempts"] == 3
    assert len(_one(smtp_server, "flaky")) == 1
    timeline = record["timeline"]
    assert [a["outcome"] for a in timeline] == ["retry", "retry", "sent"]
    assert [a["smtp_code"] for a in timeline[:2]] == [451, 451]
    settings = get_settings()
    for number, attempt in enumerate(timeline[:2], start=1):
        window = min(settings.email_retry_backoff_max, settings.email_retry_backoff * 2 ** (number - 1))
        assert window / 2 <= attempt["retry_in"] <= window
        # The next attempt did not start before the backoff was over.
        gap = _seconds(timeline[number]["started_at"]) - _seconds(attempt["finished_at"])
        assert gap >= attempt["retry_in"] - 0.01


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_permanent_failure_fails_at_once(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.data_replies.append("550 5.7.1 Message rejected as spam")
    result = send_email.delay(to=["spam@example.com"], subject="rejected", text="buy now")
    record = wait_for_status(result.id, {"failed"})
    assert record["attempts"] == 1
    assert record["last_smtp_code"] == "550"
    assert "550 5.7.1 Message rejected as spam" in record["last_error"]
    assert record["error_class"] == "smtp_5xx"
    assert smtp_server.handler.by_subject("rejected") == []


def test_retries_exhausted_ends_failed(smtp_server: SmtpServer, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(EMAIL_MAX_RETRIES="1")
    smtp_server.handler.data_replies.extend(["421 4.7.0 Too busy"] * 5)
    result = send_email.delay(to=["busy@example.com"], subject="busy", text="x")
    record = wait_for_status(result.id, {"failed"})
    assert record["attempts"] == 2
    assert [a["outcome"] for a in record["timeline"]] == ["retry", "failed"]
    assert record["last_smtp_code"] == "421"


def test_every_recipient_refused_is_permanent(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user nobody@example.com"
    result = send_email.delay(to=["nobody@example.com"], subject="nobody", text="x")
    record = wait_for_status(result.id, {"failed"})
    assert record["attempts"] == 1
    assert record["error_class"] == "recipient_rejected"
    # The address in the server's reply is masked in the stored error.
    assert "nobody@example.com" not in record["last_error"]
    assert "n***@example.com" in record["last_error"]


def test_partly_refused_is_sent_and_refused_recorded(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 Mailbox unavailable"
    result = send_email.delay(to=["here@example.com", "gone@example.com"], subject="partial", text="x")
    record = wait_for_status(result.id, {"sent"})
    [received] = _one(smtp_server, "partial")
    assert received.rcpt_tos == ["here@example.com"]
    assert record["delivered"] == "some"
    assert record["outcomes"] == [
        {
            "address": "h***@example.com",
            "outcome": "delivered",
            "code": 250,
            "message": _reply(record),
        },
        {
            "address": "g***@example.com",
            "outcome": "rejected",
            "code": 550,
            "message": "5.1.1 Mailbox unavailable",
        },
    ]


def _reply(record: dict[str, Any]) -> str:
    return str(record["outcomes"][0]["message"])


def test_greylisted_co_recipient_is_retried_alone(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies["grey@example.com"] = "450 4.2.0 Greylisted, try again later"
    result = send_email.delay(to=["first@example.com", "grey@example.com"], subject="greylisted", text="x")
    wait_until(lambda: len(smtp_server.handler.by_subject("greylisted")) == 1, 20, "the first delivery")
    smtp_server.handler.rcpt_replies.clear()
    record = wait_for_status(result.id, {"sent"})
    deliveries = smtp_server.handler.by_subject("greylisted")
    # Each person got it once: the first at once, the greylisted one on the retry, same Message-ID.
    assert [m.rcpt_tos for m in deliveries] == [["first@example.com"], ["grey@example.com"]]
    assert deliveries[0].message["Message-ID"] == deliveries[1].message["Message-ID"]
    assert record["delivered"] == "all" and record["attempts"] == 2
    assert [o["outcome"] for o in record["outcomes"]] == ["delivered", "delivered"]
    assert "error_class" not in record and "last_error" not in record  # no stale error once sent
    assert [a["outcome"] for a in record["timeline"]] == ["retry", "sent"]
    assert record["timeline"][0]["error_class"] == "smtp_4xx"


def test_connection_refused_is_transient(smtp_server: SmtpServer, settings_env: Any) -> None:
    from neoforge.processes import free_port
    from tasks import send_email

    settings_env(SMTP_PORT=str(free_port()), EMAIL_MAX_RETRIES="1")
    result = send_email.delay(to=["x@example.com"], subject="nowhere", text="x")
    record = wait_for_status(result.id, {"failed"})
    assert [a["outcome"] for a in record["timeline"]] == ["retry", "failed"]
    assert record["error_class"] == "connection"


def test_retry_delay_policy() -> None:
    assert retry_delay(1, 30, 900, rand=lambda: 0.0) == 15
    assert retry_delay(1, 30, 900, rand=lambda: 1.0) == 30
    assert retry_delay(3, 30, 900, rand=lambda: 1.0) == 120
    assert retry_delay(10, 30, 900, rand=lambda: 1.0) == 900


def test_connection_is_reused_across_emails(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    ids = [send_email.delay(to=["r@example.com"], subject=f"reuse {i}", text="x").id for i in range(5)]
    for email_id in ids:
        wait_for_status(email_id, {"sent"})
    assert smtp_server.handler.connections <= 2


def test_transactional_mail_never_waits_for_bulk_connections(
    smtp_server: SmtpServer, settings_env: Any
) -> None:
    """Bulk may hold 4 of 5 connections; a transactional email gets the fifth at once."""
    from neoforge.message import EmailRequest
    from neoforge.mime import build
    from neoforge.runtime import current
    from neoforge.smtp import deliver
    from neoforge.templates import Rendered

    settings_env(SMTP_MAX_CONNECTIONS="5")
    rt = current()
    pool, sender = rt.sender.pool, rt.settings.smtp_from

    def message(name: str) -> bytes:
        request = EmailRequest(to=[f"{name}@example.com"], subject=name, text="x")
        return build(name, request, Rendered(html=None, text="x"), rt.settings).as_bytes()

    for i in range(6):
        smtp_server.handler.rcpt_delays[f"bulk{i}@example.com"] = 1.5
    bulk = [
        rt.sender.submit(deliver(pool, sender, message(f"bulk{i}"), [f"bulk{i}@example.com"], 30, bulk=True))
        for i in range(6)
    ]
    rt.run(deliver(pool, sender, message("urgent"), ["urgent@example.com"], 30))
    subjects = [m.message["Subject"] for m in smtp_server.handler.messages]
    # It went out ahead of every bulk email (4 in their dialogue, 2 waiting).
    assert subjects == ["urgent"]
    for future in bulk:
        future.result(timeout=30)
    assert sorted(m.message["Subject"] for m in smtp_server.handler.messages)[-1] == "urgent"
    assert len(smtp_server.handler.messages) == 7
