"""Bulk sending: one template, many recipients, each email with its own status, retries and dead letter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from neoforge import EmailService
from tests.conftest import AUTH, no_email_left, wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")


def _recipients(n: int) -> list[dict[str, Any]]:
    return [{"to": f"member{i}@example.com", "context": {"name": f"Member {i}"}} for i in range(n)]


def test_bulk_send_per_recipient_status(api: Any, smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_replies["member7@example.com"] = "550 5.1.1 No such user"
    body = {"template": "test_email", "subject": "Newsletter", "recipients": _recipients(40)}
    response = api.post("/emails/bulk", json=body, headers=AUTH)
    assert response.status_code == 202
    batch_id, ids = response.json()["batch_id"], response.json()["ids"]
    assert len(ids) == len(set(ids)) == 40
    for email_id in ids:
        wait_for_status(email_id, {"sent", "failed"}, timeout=60)
    assert wait_for_status(ids[7], {"failed"})["error_class"] == "recipients_refused"
    summary = api.get(f"/batches/{batch_id}", headers=AUTH).json()
    assert summary["total"] == 40 and summary["counts"] == {"sent": 39, "failed": 1}
    received = {m.rcpt_tos[0]: m.message for m in smtp_server.handler.messages}
    assert len(received) == 39
    text = received["member3@example.com"].get_body(preferencelist=("plain",)).get_content()
    assert "Hello Member 3," in text
    assert api.get("/batches/nope", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("recipients", "loc"),
    [
        (
            [*_recipients(3), {"to": "not-an-address", "context": {"name": "x"}}],
            ["body", "recipients", 3, "to"],
        ),
        ([*_recipients(2), {"to": "m@example.com", "context": {}}], ["body", "recipients", 2, "context"]),
    ],
)
def test_bulk_refuses_bad_input_and_queues_nothing(
    api: Any, redis_client: redis.Redis, recipients: list[dict[str, Any]], loc: list[Any]
) -> None:
    body = {"template": "test_email", "subject": "Newsletter", "recipients": recipients}
    response = api.post("/emails/bulk", json=body, headers=AUTH)
    assert response.status_code == 422
    assert loc in [item["loc"][: len(loc)] for item in response.json()["detail"]]
    assert no_email_left(redis_client)
    assert redis_client.llen("bulk") == 0


def test_email_service_send_bulk(smtp_server: SmtpServer) -> None:
    batch_id, ids = asyncio.run(
        EmailService().send_bulk("test_email", "Hello all", _recipients(5), context={"product_name": "Acme"})
    )
    for email_id in ids:
        wait_for_status(email_id, {"sent"})
    assert len(smtp_server.handler.messages) == 5
    assert all(
        "Acme" in m.message.get_body(preferencelist=("plain",)).get_content()
        for m in smtp_server.handler.messages
    )
    assert batch_id
