"""One-click unsubscribe (RFC 8058): the headers bulk mail carries, and the route its link reaches.

Real Redis, a real SMTP server, Celery's in-process worker and the real API (no login on the link).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neoforge.processes import wait_until
from neoforge.signals import email_event
from tests.conftest import AUTH, wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")

BASE = "https://mail.neoforge.example.com"
_LINK = re.compile(r"<https://mail\.neoforge\.example\.com/unsubscribe/([A-Za-z0-9_.-]+)>")


@pytest.fixture
def unsubscribe_on(settings_env: Callable[..., None]) -> None:
    settings_env(EMAIL_UNSUBSCRIBE_URL=BASE + "/", EMAIL_UNSUBSCRIBE_SECRET="unsub-secret-0123456789",
                 EMAIL_UNSUBSCRIBE_MAILTO="unsubscribe@neoforge.example.com")  # fmt: skip


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []

    def listen(sender: Any = None, event: dict[str, Any] | None = None, **_: Any) -> None:
        found.append(dict(event or {}))

    email_event.connect(listen, weak=False)
    yield found
    email_event.disconnect(listen)


def _bulk(api: Any, subject: str, people: list[str], **extra: Any) -> list[str]:
    recipients = [{"to": p, "context": {"name": "Reader"}} for p in people]
    body = {"subject": subject, "template": "test_email", "recipients": recipients,
            "headers": {"List-Id": "Weekly news <weekly.neoforge.example.com>"}, **extra}  # fmt: skip
    response = api.post("/emails/bulk", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    ids: list[str] = response.json()["ids"]
    for email_id in ids:
        wait_for_status(email_id, {"sent", "suppressed"})
    return ids


def _received(smtp_server: SmtpServer, subject: str) -> dict[str, Any]:
    wait_until(lambda: bool(smtp_server.handler.by_subject(subject)), 10, subject)
    return {m.rcpt_tos[0]: m.message for m in smtp_server.handler.by_subject(subject)}


@pytest.mark.usefixtures("unsubscribe_on")
def test_one_click_unsubscribe(api: Any, smtp_server: SmtpServer, events: list[dict[str, Any]]) -> None:
    people = ["ann@example.com", "ben@example.com"]
    ids = _bulk(api, "Week 1", people)
    received = _received(smtp_server, "Week 1")
    message = received["ann@example.com"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = str(message["List-Unsubscribe"])
    assert "<mailto:unsubscribe@neoforge.example.com?subject=unsubscribe%20" in header
    token = _LINK.search(header)
    assert token is not None, header
    link = f"/unsubscribe/{token.group(1)}"
    payload = base64.urlsafe_b64decode(token.group(1).split(".")[0] + "==")
    assert b"ann@example.com" not in payload and ids[0].encode() in payload
    assert _LINK.search(str(received["ben@example.com"]["List-Unsubscribe"])).group(1) != token.group(1)  # type: ignore[union-attr]

    # The page a reader's browser opens: one button, no script, no login.
    page = api.get(link)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<form method="post"' in page.text and "<button" in page.text and "<script" not in page.text
    assert "a***@example.com" in page.text and "weekly.neoforge.example.com" in page.text

    # What a mail client sends for one-click (RFC 8058), without credentials.
    done = api.post(link, content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert done.status_code == 200 and "a***@example.com" in done.text
    check = {"address": "ann@example.com", "list_id": "weekly.neoforge.example.com"}
    entries = api.post("/suppressions/check", json=check, headers=AUTH).json()["entries"]
    assert [(e["reason"], e["list_id"]) for e in entries] == [("unsubscribe", "weekly.neoforge.example.com")]
    [event] = [e for e in events if e["type"] == "email.unsubscribed"]
    assert event["email_id"] == ids[0] and event["list_id"] == "weekly.neoforge.example.com"
    assert event["recipients"] == [{"address": "a***@example.com", "outcome": "unsubscribed"}]

    # The next issue of that list skips her; other mail still reaches her.
    again = _bulk(api, "Week 2", people)
    assert wait_for_status(again[0], {"suppressed"})["status"] == "suppressed"
    assert list(_received(smtp_server, "Week 2")) == ["ben@example.com"]
    _bulk(api, "Receipt", ["ann@example.com"], headers={})
    assert "List-Unsubscribe" not in _received(smtp_server, "Receipt")["ann@example.com"]


@pytest.mark.usefixtures("unsubscribe_on")
def test_bad_tokens_and_mail_that_gets_no_link(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    assert api.post("/unsubscribe/not-a-token").status_code == 400
    ids = _bulk(api, "Forged", ["ann@example.com"])
    token = _LINK.search(str(_received(smtp_server, "Forged")["ann@example.com"]["List-Unsubscribe"]))
    assert token is not None and ids
    payload, mac = token.group(1).split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(b"weekly", b"weakly"))
    response = api.post(f"/unsubscribe/{forged.decode().rstrip('=')}.{mac}")
    assert response.status_code == 400 and "not valid" in response.text
    assert api.get("/suppressions", headers=AUTH).json()["items"] == []

    # Transactional mail, and bulk mail with the caller's own List-Unsubscribe, are left as they are.
    headers = {"List-Id": "<weekly.neoforge.example.com>"}
    email_id = send_email.delay(to=["ann@example.com"], subject="Reset", text="x", headers=headers).id
    wait_for_status(email_id, {"sent"})
    assert "List-Unsubscribe" not in _received(smtp_server, "Reset")["ann@example.com"]
    own = {
        "List-Id": "<weekly.neoforge.example.com>",
        "List-Unsubscribe": "<mailto:own@neoforge.example.com>",
    }
    _bulk(api, "Own link", ["ann@example.com"], headers=own)
    assert (
        _received(smtp_server, "Own link")["ann@example.com"]["List-Unsubscribe"] == own["List-Unsubscribe"]
    )


def test_links_off_by_default(api: Any, smtp_server: SmtpServer) -> None:
    _bulk(api, "Plain bulk", ["ann@example.com"])
    assert "List-Unsubscribe" not in _received(smtp_server, "Plain bulk")["ann@example.com"]
    assert api.post("/unsubscribe/anything.at-all").status_code == 404
