"""What kombu's Redis transport keeps in Redis, as read by the recovery sweep and the metrics."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from neoforge.store.keys import email_key

__all__ = ["UNACKED", "message_ids", "published_at", "routing_key"]

UNACKED = "unacked"  # kombu's Redis transport default (Channel.unacked_key)


def message_ids(raw: Any) -> list[str]:
    """The email ids a raw kombu message (waiting or unacknowledged) carries, oldest first.

    A ``send_email`` message carries one, as its task id; a ``send_batch``
    message carries a bulk chunk, as its one argument (Celery's message
    protocol 2: the body is ``[args, kwargs, embed]``).
    """
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        headers = message["headers"]
        if headers.get("task") != "neoforge.send_batch":
            return [str(headers["id"])]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return [str(email_id) for email_id in json.loads(body)[0][0]]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def routing_key(raw: Any) -> str | None:
    """The queue an unacknowledged kombu entry (``[message, exchange, routing_key]``) came from."""
    try:
        return str(json.loads(raw)[2])
    except (ValueError, IndexError, TypeError):
        return None


def published_at(client: redis.Redis, email_id: str) -> float | None:
    """When the email's latest message was published (epoch seconds), if recorded."""
    published = client.hget(email_key(email_id), "published_ts")
    return float(str(published)) if published else None
