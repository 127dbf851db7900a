"""Bulk sending: one template, many recipients, each email with its own status, retries and dead letter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from neoforge.broker import message_ids
from neoforge.service import EmailService
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
    assert wait_for_status(ids[7], {"failed"})["error_class"] == "recipient_rejected"
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


def test_bulk_batches_keep_each_email_on_its_own(
    smtp_server: SmtpServer, settings_env: Any, redis_client: redis.Redis
) -> None:
    from tasks import send_batch

    # 10 recipients in messages of 4; one recipient's server says "later" once.
    settings_env(EMAIL_BULK_BATCH_SIZE="4", EMAIL_RETRY_BACKOFF="0.2", EMAIL_RETRY_BACKOFF_MAX="0.2")
    smtp_server.handler.rcpt_replies["member5@example.com"] = "451 4.7.1 Try again later"
    _, ids = asyncio.run(EmailService().send_bulk("test_email", "Batched", _recipients(10)))
    retrying = wait_for_status(ids[5], {"retrying", "failed"})
    assert retrying["status"] == "retrying" and retrying["last_smtp_code"] == "451"
    del smtp_server.handler.rcpt_replies["member5@example.com"]
    records = [wait_for_status(email_id, {"sent", "failed"}) for email_id in ids]
    assert [r["status"] for r in records] == ["sent"] * 10
    assert [r["attempts"] for r in records] == [1] * 5 + [2] + [1] * 4
    assert smtp_server.handler.deliveries() == dict.fromkeys(ids, 1)
    # Each email's result is in the result backend under its own id.
    from tasks import app

    assert app.AsyncResult(ids[0]).state == "SUCCESS"

    # The same batch message again (a redelivery): the ledger sends nothing.
    again = send_batch.apply_async((ids,), queue="bulk").get(timeout=20)
    assert again["skipped"] == 10 and again["sent"] == 0
    assert smtp_server.handler.deliveries() == dict.fromkeys(ids, 1)


def test_batch_message_names_its_emails(redis_client: redis.Redis) -> None:
    from tasks import send_batch

    # A queue nobody consumes: the message waits there as kombu stored it.
    queue = "nobody-reads-this"
    send_batch.apply_async((["id-1", "id-2", "id-3"],), queue=queue)
    try:
        assert message_ids(redis_client.lindex(queue, 0)) == ["id-1", "id-2", "id-3"]
    finally:
        redis_client.delete(queue)
