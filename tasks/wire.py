"""A ``send_email`` message as Celery's own ``apply_async`` would put it on the Redis broker.

So that an email's record and its message are written by one script, in one
round trip (neoforge/store/lua/create.lua), the message is built here instead
of being sent through kombu's producer: Celery builds it
(``app.amqp.create_task_message``, as ``send_task`` does), kombu serialises the
body, and the envelope is the one kombu's Redis transport pushes
(``Producer.publish`` → ``Channel.prepare_message`` → ``basic_publish`` →
LPUSH onto the queue's list). tests/test_wire.py checks it field by field
against a message Celery itself published, so it fails the day upstream
changes the layout. Options or settings this does not cover return None: the
caller then publishes through Celery.
"""

from __future__ import annotations

import base64
import uuid
import weakref
from typing import Any

from celery import Task
from celery.signals import after_task_publish, before_task_publish
from celery.utils.functional import maybe_list
from kombu import serialization
from kombu.utils.json import dumps

from neoforge.store.admission import Publish

__all__ = ["message_for"]

# Options that only change the message's headers or body, which Celery builds.
_BUILT = frozenset(
    {"link", "link_error", "chain", "chord", "group_id", "group_index", "root_id", "parent_id", "shadow"}
)
_DELIVERY_MODES = {"transient": 1, "persistent": 2}


def message_for(
    task: Task, email_id: str, queue: str, countdown: float | None, options: dict[str, Any]
) -> Publish | None:
    """The broker message of EMAIL_ID for QUEUE, or None when Celery must publish it itself.

    Celery publishes itself when called from inside a task (it links the email
    to its parent), when a publish signal has receivers, when ``task-sent``
    events are on, and for any option beyond the canvas ones (priority,
    exchange, headers, a producer, ...).
    """
    app = task.app
    serializer, default_mode, covered = _settings(app)
    if (
        not covered
        or options.keys() - _BUILT
        or before_task_publish.receivers
        or after_task_publish.receivers
        or app.current_worker_task is not None
    ):
        return None
    declared = app.amqp.queues.get(queue)
    if declared is None or declared.exchange.type != "direct":
        return None
    headers, properties, body, _ = app.amqp.create_task_message(
        email_id, task.name, (email_id,), {}, countdown, None,
        options.get("group_id"), options.get("group_index"), None, 0, options.get("chord"),
        maybe_list(options.get("link")), maybe_list(options.get("link_error")),
        app.thread_oid, task.time_limit, task.soft_time_limit, False,
        options.get("root_id"), options.get("parent_id"), options.get("shadow"), options.get("chain"),
        ignore_result=task.ignore_result, argsrepr="()", kwargsrepr=f"{{'email_id': '{email_id}'}}",
    )  # fmt: skip
    content_type, content_encoding, data = serialization.dumps(body, serializer)
    mode = declared.exchange.delivery_mode or default_mode
    properties["delivery_mode"] = _DELIVERY_MODES.get(mode, mode)
    # With a direct exchange Celery publishes to the default exchange, routing key = queue name.
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    properties["priority"] = 0
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = str(uuid.uuid4())
    raw = data.encode() if isinstance(data, str) else data
    entry = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return Publish(queue, dumps(entry))


_SETTINGS: weakref.WeakKeyDictionary[Any, tuple[str, Any, bool]] = weakref.WeakKeyDictionary()


def _settings(app: Any) -> tuple[str, Any, bool]:
    """(serializer, default delivery mode, whether this module lays out APP's messages), read once per app.

    Reading Celery's configuration costs more than building the message.
    """
    known = _SETTINGS.get(app)
    if known is None:
        conf = app.conf
        covered = (
            not conf.task_send_sent_event
            and conf.task_protocol == 2
            and not (conf.broker_transport_options or {}).get("global_keyprefix")
        )
        known = _SETTINGS[app] = (conf.task_serializer, conf.task_default_delivery_mode, covered)
    return known
