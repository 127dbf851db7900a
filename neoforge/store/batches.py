"""Bulk sends: each batch's size and its emails' ids, for progress by status."""

from __future__ import annotations

from typing import Any

import redis

from neoforge.store.encoding import now_iso
from neoforge.store.keys import batch_emails_key, batch_key, email_key

__all__ = ["batch_summary", "create_batch"]


def create_batch(client: redis.Redis, batch_id: str, ids: list[str], template: str, ttl: int) -> None:
    """Record a bulk send: its size and its emails' ids, kept TTL seconds."""
    key = batch_key(batch_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(
            key, mapping={"id": batch_id, "total": len(ids), "template": template, "created_at": now_iso()}
        )
        pipe.rpush(batch_emails_key(batch_id), *ids)
        pipe.expire(key, ttl)
        pipe.expire(batch_emails_key(batch_id), ttl)
        pipe.execute()


def batch_summary(client: redis.Redis, batch_id: str) -> dict[str, Any] | None:
    """The batch's size and how many of its emails are in each status; None if unknown."""
    record = client.hgetall(batch_key(batch_id))
    if not record:
        return None
    ids = [str(i) for i in client.lrange(batch_emails_key(batch_id), 0, -1)]
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        with client.pipeline(transaction=False) as pipe:
            for email_id in ids[start : start + 1000]:
                pipe.hget(email_key(email_id), "status")
            for status in pipe.execute():
                name = str(status) if status else "expired_record"
                counts[name] = counts.get(name, 0) + 1
    return {
        "id": batch_id,
        "total": int(record["total"]),
        "template": record.get("template"),
        "created_at": record.get("created_at"),
        "counts": counts,
    }
