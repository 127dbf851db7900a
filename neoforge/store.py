"""Where statuses are written: each email's record, payload and attempt timeline in Redis.

Keys (all under ``neoforge:``):

- ``neoforge:email:{id}``          hash: status, attempts, last_error, timestamps, ...
- ``neoforge:email:{id}:payload``  the validated request as JSON, until it is sent
- ``neoforge:email:{id}:attempts`` list: one JSON entry per delivery attempt
- ``neoforge:failed``              sorted set of failed email ids by time of failure

A record exists from the moment an id is handed out, so an id with no record
was never queued: that is a 404, never Celery's ambiguous PENDING.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import redis

from neoforge.errors import QueueUnavailable
from neoforge.redis_client import get_redis, safe_url
from neoforge.settings import get_settings

__all__ = ["ACTIVE", "TERMINAL", "Attempt", "StatusStore", "get_store", "now_iso"]

PREFIX = "neoforge:"
FAILED_INDEX = f"{PREFIX}failed"

# Statuses from which a worker may (re)start delivery, and those it never leaves.
ACTIVE = frozenset({"queued", "sending", "retrying"})
TERMINAL = frozenset({"sent", "failed"})

Attempt = dict[str, Any]
_Mapping = Any  # redis-py's stub wants an invariant key type that no plain dict has

# Start an attempt atomically: a record that is missing or already finished is
# reported back and left alone, so a stale or duplicate message sends nothing.
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', false, 0} end
if status ~= 'queued' and status ~= 'sending' and status ~= 'retrying' then
  return {status, false, 0}
end
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[1], 'worker', ARGV[2])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'sending', redis.call('GET', KEYS[2]), n}
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def email_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}"


def payload_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:payload"


def attempts_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:attempts"


class StatusStore:
    """Reads and writes email records; every write is one atomic Redis round trip."""

    def __init__(self, client: redis.Redis, status_ttl: int) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self._begin = client.register_script(_BEGIN)

    def create(self, email_id: str, payload: str, fields: dict[str, str | int]) -> None:
        """Record a new email as queued, with its payload."""
        now = now_iso()
        record: dict[str, str | int] = {
            "id": email_id,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        record.update(fields)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(email_key(email_id), mapping=cast(_Mapping, record))
            pipe.set(payload_key(email_id), payload)
            pipe.execute()

    def discard(self, email_id: str) -> None:
        """Remove every trace of an email that could not be queued."""
        self.client.delete(email_key(email_id), payload_key(email_id), attempts_key(email_id))

    def begin_attempt(self, email_id: str, worker: str) -> tuple[str, str | None, int]:
        """Mark the email sending; return (status, payload, attempt number).

        The status is ``sending`` when the caller should deliver; anything else
        (``missing``, ``sent``, ``failed``) means there is nothing to do.
        """
        status, payload, attempt = self._begin(
            keys=[email_key(email_id), payload_key(email_id)], args=[now_iso(), worker]
        )
        return str(status), payload if payload else None, int(attempt)

    def record_attempt(self, email_id: str, attempt: Attempt) -> None:
        """Append one attempt to the email's timeline."""
        self.client.rpush(attempts_key(email_id), json.dumps(attempt, separators=(",", ":")))

    def mark_retrying(self, email_id: str, attempt: Attempt, next_attempt_at: str) -> None:
        """The attempt failed transiently; another is scheduled."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(attempts_key(email_id), json.dumps(attempt, separators=(",", ":")))
            pipe.hset(
                email_key(email_id),
                mapping={
                    "status": "retrying",
                    "updated_at": attempt["finished_at"],
                    "last_error": attempt["error"],
                    "last_smtp_code": attempt.get("smtp_code") or "",
                    "error_class": attempt["error_class"],
                    "next_attempt_at": next_attempt_at,
                },
            )
            pipe.execute()

    def mark_sent(self, email_id: str, attempt: Attempt, refused: list[dict[str, Any]]) -> None:
        """The SMTP server accepted the message: record it, drop the content, let it expire."""
        fields: dict[str, str] = {
            "status": "sent",
            "updated_at": attempt["finished_at"],
            "sent_at": attempt["finished_at"],
            "next_attempt_at": "",
        }
        if refused:
            fields["refused"] = json.dumps(refused, separators=(",", ":"))
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(attempts_key(email_id), json.dumps(attempt, separators=(",", ":")))
            pipe.hset(email_key(email_id), mapping=cast(_Mapping, fields))
            pipe.delete(payload_key(email_id))
            pipe.expire(email_key(email_id), self.status_ttl)
            pipe.expire(attempts_key(email_id), self.status_ttl)
            pipe.execute()

    def mark_failed(self, email_id: str, attempt: Attempt) -> None:
        """Delivery gave up: keep the record and payload (no expiry) in the dead-letter index."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(attempts_key(email_id), json.dumps(attempt, separators=(",", ":")))
            pipe.hset(
                email_key(email_id),
                mapping={
                    "status": "failed",
                    "updated_at": attempt["finished_at"],
                    "failed_at": attempt["finished_at"],
                    "last_error": attempt["error"],
                    "last_smtp_code": attempt.get("smtp_code") or "",
                    "error_class": attempt["error_class"],
                    "next_attempt_at": "",
                },
            )
            pipe.zadd(FAILED_INDEX, {email_id: datetime.now(UTC).timestamp()})
            pipe.execute()

    def get(self, email_id: str) -> dict[str, Any] | None:
        """The record with its timeline, or None if the id was never queued."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(email_key(email_id))
            pipe.lrange(attempts_key(email_id), 0, -1)
            record, attempts = pipe.execute()
        if not record:
            return None
        result: dict[str, Any] = dict(record)
        result["attempts"] = int(record.get("attempts", 0))
        result["refused"] = json.loads(record["refused"]) if record.get("refused") else []
        result["timeline"] = [json.loads(item) for item in attempts]
        return result


def get_store() -> StatusStore:
    """The store for the configured Redis."""
    settings = get_settings()
    return StatusStore(get_redis(settings.redis_url), settings.email_status_ttl)


def unavailable(exc: redis.RedisError) -> QueueUnavailable:
    """A QueueUnavailable naming the Redis URL (password hidden)."""
    url = safe_url(get_settings().redis_url)
    return QueueUnavailable(f"cannot reach Redis at {url}: {type(exc).__name__}")
