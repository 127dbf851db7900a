"""What kombu's Redis transport keeps in Redis, as read by the recovery sweep and the metrics."""

from __future__ import annotations

import json
from typing import Any

import redis

from neoforge.store import email_key

__all__ = ["UNACKED", "message_id", "published_at"]

UNACKED = "unacked"  # kombu's Redis transport default (Channel.unacked_key)


def message_id(raw: Any) -> str | None:
    """The email id (task id) of a raw kombu message, waiting or unacknowledged."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def published_at(client: redis.Redis, email_id: str) -> float | None:
    """When the email's latest message was published (epoch seconds), if recorded."""
    published = client.hget(email_key(email_id), "published_ts")
    return float(str(published)) if published else None
