"""The suppression list: hard bounces and addresses added by hand are never sent to again.

Real Redis, a real SMTP server, Celery's in-process worker, the real API and CLI.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from neoforge.processes import wait_until
from tests.conftest import AUTH, wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")

GONE = "gone.user@example.com"
KEPT = "kept.user@example.com"


def _check(api: Any, address: str, list_id: str | None = None) -> dict[str, Any]:
    response = api.post("/suppressions/check", json={"address": address, "list_id": list_id}, headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _rcpts(smtp_server: SmtpServer, subject: str) -> list[list[str]]:
    return [m.rcpt_tos for m in smtp_server.handler.by_subject(subject)]


def test_hard_bounce_suppresses_the_address_for_later_emails(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies[GONE] = "550 5.1.1 <gone.user@example.com>: no such user"
    first = send_email.delay(to=[GONE, KEPT], subject="First", text="hello").id
    record = wait_for_status(first, {"sent"})
    assert record["delivered"] == "some"
    found = _check(api, GONE)
    assert found["suppressed"] and found["entries"][0]["reason"] == "bounce"
    assert found["entries"][0]["address"] == "g***@example.com" and found["entries"][0]["list_id"] is None
    assert not _check(api, KEPT)["suppressed"]

    # The server would take it now: the address is still never given to it.
    smtp_server.handler.rcpt_replies.clear()
    second = send_email.delay(to=[GONE, KEPT], subject="Second", text="hello").id
    record = wait_for_status(second, {"sent"})
    assert _rcpts(smtp_server, "Second") == [[KEPT]]
    assert [o["outcome"] for o in record["outcomes"]] == ["suppressed", "delivered"]

    only = send_email.delay(to=[GONE], subject="Third", text="hello")
    record = wait_for_status(only.id, {"suppressed"})
    assert record["attempts"] == 0 and record["timeline"][-1]["outcome"] == "suppressed"
    assert _rcpts(smtp_server, "Third") == []
    with pytest.raises(Exception, match="suppressed"):
        only.get(timeout=10, propagate=True)
    metrics = api.get("/metrics").text
    assert 'neoforge_emails_suppressed_total{priority="transactional"} 1.0' in metrics
    assert 'neoforge_suppressions_added_total{reason="bounce"} 1.0' in metrics
    assert "neoforge_suppressed_addresses 1.0" in metrics


def test_policy_refusals_do_not_suppress(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies[GONE] = "550 5.7.1 relaying denied"
    email_id = send_email.delay(to=[GONE, KEPT], subject="Policy", text="hello").id
    wait_for_status(email_id, {"sent"})
    assert not _check(api, GONE)["suppressed"]


def test_api_add_check_list_remove_and_expiry(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    added = api.post("/suppressions", json={"address": "Manual.Person@example.com"}, headers=AUTH)
    assert added.status_code == 201 and added.json()["address"] == "M***@example.com"
    assert _check(api, "manual.person@example.com")["suppressed"]  # the same address, any case
    brief = {"address": KEPT, "expires_in_days": 1 / 86400}
    assert api.post("/suppressions", json=brief, headers=AUTH).status_code == 201
    bad = api.post("/suppressions", json={"address": "not-an-address"}, headers=AUTH)
    assert bad.status_code == 422
    assert api.post("/suppressions", json={"address": GONE}).status_code == 401

    # The brief one lapses on its own; the manual one stays until removed.
    wait_until(lambda: not _check(api, KEPT)["suppressed"], 10, "the entry to expire")
    page = api.get("/suppressions", headers=AUTH).json()
    assert [item["address"] for item in page["items"]] == ["M***@example.com"]
    assert "manual.person" not in api.get("/suppressions", headers=AUTH).text.lower()

    email_id = send_email.delay(to=["manual.person@example.com"], subject="Blocked", text="x").id
    wait_for_status(email_id, {"suppressed"})
    removed = api.post("/suppressions/remove", json={"address": "manual.person@example.com"}, headers=AUTH)
    assert removed.json() == {"removed": 1}
    email_id = send_email.delay(to=["manual.person@example.com"], subject="Allowed", text="x").id
    wait_for_status(email_id, {"sent"})
    assert _rcpts(smtp_server, "Blocked") == [] and len(_rcpts(smtp_server, "Allowed")) == 1


def test_list_scope_and_bulk(api: Any, smtp_server: SmtpServer, celery_app: Any) -> None:
    body = {"address": "member1@example.com", "list_id": "news.example.com", "reason": "unsubscribe"}
    assert api.post("/suppressions", json=body, headers=AUTH).status_code == 201
    assert _check(api, "member1@example.com", "news.example.com")["suppressed"]
    assert not _check(api, "member1@example.com", "other.example.com")["suppressed"]
    recipients = [{"to": f"member{i}@example.com", "context": {"name": f"M{i}"}} for i in range(3)]
    bulk = {"template": "test_email", "subject": "News", "recipients": recipients,
            "headers": {"List-Id": "Our news <news.example.com>"}}  # fmt: skip
    response = api.post("/emails/bulk", json=bulk, headers=AUTH)
    assert response.status_code == 202, response.text
    batch_id, ids = response.json()["batch_id"], response.json()["ids"]
    for email_id in ids:
        wait_for_status(email_id, {"sent", "suppressed"})
    summary = api.get(f"/batches/{batch_id}", headers=AUTH).json()
    assert summary["counts"] == {"sent": 2, "suppressed": 1}
    with pytest.raises(Exception, match="suppressed"):
        celery_app.AsyncResult(ids[1]).get(timeout=10)
    assert sorted(r[0] for r in _rcpts(smtp_server, "News")) == ["member0@example.com", "member2@example.com"]
    # Another list's mail (no List-Id here) still reaches member1.
    other = dict(bulk, subject="Receipts", headers={}, recipients=recipients[1:2])
    [email_id] = api.post("/emails/bulk", json=other, headers=AUTH).json()["ids"]
    wait_for_status(email_id, {"sent"})
    assert 'neoforge_emails_suppressed_total{priority="bulk"} 1.0' in api.get("/metrics").text


def test_cli_add_check_list_remove() -> None:
    from neoforge.cli import main

    runner = CliRunner()
    added = runner.invoke(main, ["suppression", "add", "cli.person@example.com", "--days", "2"])
    assert added.exit_code == 0, added.output
    assert "c***@example.com" in added.output and "cli.person" not in added.output
    checked = runner.invoke(main, ["suppression", "check", "CLI.person@example.com"])
    assert checked.exit_code == 0 and "all lists" in checked.output and "manual" in checked.output
    listed = runner.invoke(main, ["suppression", "list"])
    assert listed.exit_code == 0 and "c***@example.com" in listed.output
    assert runner.invoke(main, ["suppression", "remove", "cli.person@example.com"]).exit_code == 0
    missing = runner.invoke(main, ["suppression", "check", "cli.person@example.com"])
    assert missing.exit_code == 1 and "not suppressed" in missing.output
    bad = runner.invoke(main, ["suppression", "add", "nope"])
    assert bad.exit_code == 2 and "not a valid email address" in bad.output
