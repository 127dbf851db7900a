"""``send_email.send_many``: many different emails from app code, a Redis transaction per chunk.

A real in-process worker and SMTP server: every email gets its own id and
status and is delivered once; an invalid one refuses the call before anything
is queued.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from neoforge.errors import InvalidEmail
from tests.conftest import all_sent, no_email_left
from tests.smtp_server import SmtpServer


def _email(number: int) -> dict[str, Any]:
    return {"to": [f"many{number}@example.com"], "subject": f"Many #{number}", "text": f"Hello {number}"}


def test_chunks_of_different_emails_are_each_delivered_once(
    celery_app: Any, worker: Any, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    from tasks import send_email

    emails = [_email(n) for n in range(25)]
    emails[7]["idempotency_key"] = emails[19]["idempotency_key"] = "many-once"
    ids = send_email.send_many(emails, chunk=10)
    assert len(ids) == 25 and ids[19] == ids[7] and len(set(ids)) == 24
    all_sent(redis_client, ids, timeout=60)
    deliveries = smtp_server.handler.deliveries()
    assert all(deliveries.get(email_id) == 1 for email_id in set(ids)), deliveries
    for number in (0, 24):
        assert [str(m.message["To"]) for m in smtp_server.handler.by_subject(f"Many #{number}")] == [
            f"many{number}@example.com"
        ]


def test_an_invalid_email_queues_none_and_names_its_index(celery_app: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email

    emails = [_email(n) for n in range(12)]
    emails[11]["to"] = ["not an address"]
    with pytest.raises(InvalidEmail) as caught:
        send_email.send_many(emails, chunk=5)
    assert [error.loc[:2] for error in caught.value.errors] == [(11, "to")]
    assert no_email_left(redis_client)
    assert redis_client.llen("transactional") == 0
