"""The one place we read kombu's storage (neoforge/broker.py) still matches what kombu writes.

True queue depth and the recovery sweep need what kombu's Redis transport
keeps in Redis: a list per queue holding the serialized message, and a hash
of unacknowledged messages. Nothing here is written by us: Celery and kombu
publish and take the messages through their public API. If an upgrade of
kombu changes the layout, this fails before the metrics or the sweep go blind.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import Connection, Queue

import tasks  # the module, not its tasks: pytest would evaluate Celery's task proxies while collecting
from neoforge.broker import UNACKED, message_ids


def test_waiting_messages_name_their_emails(redis_client: redis.Redis, celery_app: Any) -> None:
    tasks.send_email.publish("layout-single", queue="layout")
    tasks.send_batch.apply_async((["id-1", "id-2"],), queue="layout")
    try:
        raw = redis_client.lrange("layout", 0, -1)  # kombu LPUSHes: oldest last
        assert [message_ids(item) for item in reversed(raw)] == [["layout-single"], ["id-1", "id-2"]]
    finally:
        redis_client.delete("layout")


def test_unacknowledged_messages_are_in_kombus_hash(redis_client: redis.Redis, celery_app: Any) -> None:
    tasks.send_email.publish("layout-unacked", queue="layout2")
    with Connection(celery_app.conf.broker_url) as connection:
        queue = Queue("layout2", channel=connection.default_channel)
        taken = queue.get(no_ack=False)
        assert taken is not None
        try:
            held = redis_client.hvals(UNACKED)
            assert ["layout-unacked"] in [message_ids(item) for item in held]
        finally:
            taken.ack()
    redis_client.delete("layout2")
