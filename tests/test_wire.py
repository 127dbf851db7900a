"""tasks/wire.py lays out a ``send_email`` message exactly as Celery's own publish does on Redis.

The email's record and message go to Redis in one script; these tests hold the
message to what ``Task.apply_async`` → kombu's Redis transport pushes, field by
field, so they fail the day Celery or kombu change the layout.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from celery import Task

from tests.conftest import wait_for_status


def _pushed(client: redis.Redis, queue: str) -> dict[str, Any]:
    entries = client.lrange(queue, 0, -1)
    assert len(entries) == 1, entries
    client.delete(queue)
    return dict(json.loads(entries[0]))


def _comparable(entry: dict[str, Any]) -> dict[str, Any]:
    properties = dict(entry["properties"])
    assert uuid.UUID(properties.pop("delivery_tag"))  # a fresh tag per publish, either way
    # Celery copies the options it does not know (argsrepr, kwargsrepr) into the
    # properties too; they repeat the headers and nothing reads them there.
    properties.pop("argsrepr", None)
    properties.pop("kwargsrepr", None)
    return {**entry, "properties": properties}


def test_the_message_is_the_one_celery_publishes(celery_app: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email
    from tasks.wire import message_for

    task: Task = send_email
    for queue, countdown, options in [
        ("transactional", None, {}),
        ("bulk", 30.0, {"link": task.si(email_id="x"), "group_id": "g", "group_index": 2}),
    ]:
        email_id = str(uuid.uuid4())
        # Celery's own publish: what EmailTask sends for an email recorded earlier.
        Task.apply_async(task, (email_id,), {}, task_id=email_id, queue=queue, countdown=countdown,
                         argsrepr="()", kwargsrepr=f"{{'email_id': '{email_id}'}}", **options)  # fmt: skip
        theirs = _pushed(redis_client, queue)
        ours = message_for(task, email_id, queue, countdown, dict(options))
        assert ours is not None and ours.list_key == queue
        mine = json.loads(ours.entry)
        if countdown:  # the eta is computed from the clock at each call
            assert abs(_eta(mine) - _eta(theirs)) < 5
            mine["headers"]["eta"] = theirs["headers"]["eta"]
        assert _comparable(mine) == _comparable(theirs)


def _eta(entry: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(entry["headers"]["eta"]).timestamp()


def test_options_it_does_not_lay_out_go_through_celery(celery_app: Any) -> None:
    from tasks import send_email
    from tasks.wire import message_for

    assert message_for(send_email, "x", "transactional", None, {"priority": 5}) is None
    assert message_for(send_email, "x", "transactional", None, {"headers": {"a": 1}}) is None
    assert message_for(send_email, "x", "no-such-queue", None, {}) is None


def test_a_worker_delivers_an_email_queued_in_one_round_trip(celery_app: Any, worker: Any) -> None:
    from tasks import send_email

    result = send_email.delay(to=["wire@example.com"], subject="One trip", text="Hello")
    assert wait_for_status(result.id, {"sent"})["status"] == "sent"
