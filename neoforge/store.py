"""Where statuses are written: each email's record, payload, timeline and delivery ledger in Redis.

Keys (all under ``neoforge:``):

- ``neoforge:email:{id}``          hash: status, attempts, last_error, timestamps, ...
- ``neoforge:email:{id}:payload``  the validated request as JSON (zlib + base64 if long), until sent
- ``neoforge:email:{id}:attempts`` list: one JSON entry per delivery attempt (and requeue)
- ``neoforge:email:{id}:lease``    who is sending it right now (expires on its own)
- ``neoforge:failed``              sorted set: failed email ids by time of failure (dead letters)
- ``neoforge:scheduled``           sorted set: email ids by the time they are due in the broker
- ``neoforge:pending``             sorted set: published, unfinished email ids by time of publishing
- ``neoforge:idem:{key}``          the email id queued under an idempotency key
- ``neoforge:rcpt:{sha256}``       hash: ids of the emails to one address, as fields (for erasure
  requests; a small hash is packed, a set of UUIDs is not)
- ``neoforge:metrics``             hash: counters for Prometheus, shared by every process
- ``neoforge:metrics:latency``, ``neoforge:metrics:send_duration``  hashes: histogram buckets

A record exists from the moment an id is handed out, so an id with no record
was never queued: that is a 404, never Celery's ambiguous PENDING. The record
is also the delivery ledger: once it says ``sent``, no redelivered or
duplicate message sends the email again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib
from datetime import UTC, datetime
from typing import Any, cast

import redis

from neoforge.errors import QueueUnavailable
from neoforge.redis_client import get_redis, safe_url
from neoforge.settings import get_settings

__all__ = ["TERMINAL", "Attempt", "StatusStore", "event", "get_store", "now_iso"]

PREFIX = "neoforge:"
FAILED_INDEX = f"{PREFIX}failed"
SCHEDULED = f"{PREFIX}scheduled"
PENDING = f"{PREFIX}pending"
METRICS = f"{PREFIX}metrics"
LATENCY = f"{PREFIX}metrics:latency"
SEND_DURATION = f"{PREFIX}metrics:send_duration"
# Histogram bucket bounds in seconds (Prometheus ``le``).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Statuses an email never leaves (but for a requeue of a failed one).
TERMINAL = frozenset({"sent", "failed", "expired", "cancelled"})

Attempt = dict[str, Any]
_Mapping = Any  # redis-py's stub wants an invariant key type that no plain dict has

# Record a new email. With an idempotency key already taken, nothing is
# written and the earlier id is returned; a scheduled email is entered in the
# scheduled set, any other in the pending index (it is about to be published).
# With a broker message, it is pushed to its queue in the same step.
# KEYS: record, payload, idem (or ""), scheduled set, pending index, metrics,
# queue (or ""), then one recipient index per address.
# ARGV: id, payload, idem ttl, due score (or ""), index ttl, message (or ""),
# then field/value pairs.
_CREATE = """
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[3]) then
    return redis.call('GET', KEYS[3])
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
for i = 8, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], '')
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[6], 'queued|' .. (redis.call('HGET', KEYS[1], 'priority') or 'transactional'), 1)
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  local now = redis.call('TIME')
  local ts = now[1] + now[2] / 1000000
  redis.call('HSET', KEYS[1], 'published_ts', ts)
  redis.call('ZADD', KEYS[5], ts, ARGV[1])
  if ARGV[6] ~= '' then redis.call('LPUSH', KEYS[7], ARGV[6]) end
end
return ARGV[1]
"""

# Start an attempt. Missing, finished or scheduled emails are reported and
# left alone; an email leased by another sender is reported with the lease
# holder. Expiry is judged only once the lease is ours, so a stray message
# cannot expire an email another worker is sending. An active email whose
# content was purged is cancelled. KEYS: record, payload, lease, pending,
# metrics. ARGV: now (ISO), worker, lease value, lease ms, now (epoch), dead
# lease to break, id.
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', false, 0} end
if status ~= 'queued' and status ~= 'sending' and status ~= 'retrying' then
  return {status, false, 0}
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then redis.call('DEL', KEYS[3]) end
if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {'leased', redis.call('GET', KEYS[3]), redis.call('PTTL', KEYS[3])}
end
if status == 'sending' then
  local attempts = redis.call('HGET', KEYS[1], 'attempts')
  if redis.call('HGET', KEYS[1], 'data_attempt') == attempts then
    -- The last attempt's sender went away after it began DATA: the server may
    -- have the message. Never a second copy: the caller dead-letters it (the
    -- lease stays ours until then).
    return {'unknown', false, tonumber(attempts)}
  end
end
local function finish(final)
  redis.call('HSET', KEYS[1], 'status', final, 'updated_at', ARGV[1], 'next_attempt_at', '')
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[7])
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  finish('cancelled')
  return {'cancelled', false, 0}
end
local expires = redis.call('HGET', KEYS[1], 'expires_ts')
if expires and expires ~= '' and tonumber(expires) <= tonumber(ARGV[5]) then
  finish('expired')
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'transactional'
  redis.call('HINCRBY', KEYS[5], 'expired|' .. priority, 1)
  return {'expired', false, 0}
end
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[1], 'worker', ARGV[2])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local created = redis.call('HGET', KEYS[1], 'created_ts') or ''
local priority = redis.call('HGET', KEYS[1], 'priority') or 'transactional'
return {'sending', redis.call('GET', KEYS[2]), n, created, priority}
"""

# Put a failed email back in the queue: attempts restart, history stays; it
# enters the pending index at once, so that a failed publish is recovered.
# A purged email (no content left) cannot be requeued.
# KEYS: record, attempts, failed index, payload, pending. ARGV: id, now (ISO), timeline entry.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
local now = redis.call('TIME')
local ts = now[1] + now[2] / 1000000
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'updated_at', ARGV[2],
           'requeued_at', ARGV[2], 'next_attempt_at', '', 'published_ts', ts)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[5], ts, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"""

# A scheduled email is due: it becomes queued before it is published, so the
# worker that receives it finds it ready. KEYS: record. ARGV: now (ISO).
_RELEASE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'scheduled' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1], 'next_attempt_at', '')
  status = 'queued'
end
return {status, redis.call('HGET', KEYS[1], 'queue') or ''}
"""


# Drop an email's content (payload, refused addresses); an unfinished email is
# cancelled so that no worker sends it. KEYS: record, payload, pending,
# scheduled, lease. ARGV: id, now (ISO).
_PURGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'refused')
redis.call('HSET', KEYS[1], 'purged_at', ARGV[2], 'updated_at', ARGV[2])
if status ~= 'sent' and status ~= 'failed' and status ~= 'expired' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'next_attempt_at', '')
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  status = 'cancelled'
end
return status
"""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event(outcome: str, error: str = "", error_class: str = "", worker: str = "") -> Attempt:
    """A timeline entry for something that was not a delivery attempt (requeue, time limit)."""
    now = now_iso()
    entry: Attempt = {
        "attempt": 0,
        "started_at": now,
        "finished_at": now,
        "duration_ms": 0,
        "worker": worker,
        "outcome": outcome,
    }
    if error:
        entry.update(error=error, error_class=error_class)
    return entry


def email_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}"


# Payloads over this size are stored zlib-compressed (base64, marked "z:"):
# a 2 KB text+HTML email takes about 1 KB instead of 2.3 KB, for ~40 µs.
_COMPRESS_FROM = 600


def pack_payload(payload: str) -> str:
    """PAYLOAD as stored: compressed when that pays."""
    if len(payload) < _COMPRESS_FROM:
        return payload
    packed = "z:" + base64.b64encode(zlib.compress(payload.encode(), 6)).decode()
    return packed if len(packed) < len(payload) else payload


def unpack_payload(stored: str) -> str:
    """The JSON payload back from what ``pack_payload`` stored."""
    if stored.startswith("z:"):
        return zlib.decompress(base64.b64decode(stored[2:])).decode()
    return stored


def payload_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:payload"


def attempts_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:attempts"


def lease_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:lease"


def recipient_key(address: str) -> str:
    # Hashed: the index lets us erase a person's emails without storing their address in a key name.
    return f"{PREFIX}rcpt:{hashlib.sha256(address.lower().encode()).hexdigest()}"


def idempotency_key(key: str) -> str:
    # Hashed: the caller's key may be long or carry personal data.
    return f"{PREFIX}idem:{hashlib.sha256(key.encode()).hexdigest()}"


def _observe(pipe: Any, key: str, buckets: tuple[float, ...], value: float) -> None:
    """Count VALUE in the first bucket that holds it (cumulated when exported)."""
    bucket = next((str(b) for b in buckets if value <= b), "+Inf")
    pipe.hincrby(key, bucket, 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class StatusStore:
    """Reads and writes email records; every write is one atomic Redis round trip."""

    def __init__(self, client: redis.Redis, status_ttl: int) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self._create = client.register_script(_CREATE)
        self._begin = client.register_script(_BEGIN)
        self._requeue = client.register_script(_REQUEUE)
        self._release = client.register_script(_RELEASE)
        self._purge = client.register_script(_PURGE)

    def create(
        self,
        email_id: str,
        payload: str,
        fields: dict[str, str | int],
        *,
        idempotency: tuple[str, int] | None = None,
        due: float | None = None,
        recipients: list[str] | None = None,
        pipeline: Any = None,
        message: tuple[str, str] | None = None,
    ) -> str:
        """Record a new email (queued, or scheduled when DUE is given); return its id.

        With an IDEMPOTENCY (key, seconds) already used, nothing is written and
        the id recorded under that key is returned instead. With a PIPELINE the
        write is only queued on it (the caller executes it). MESSAGE, a broker
        message as (queue key, body), is pushed in the same step.
        """
        now = now_iso()
        record: dict[str, str | int] = {
            "id": email_id,
            "status": "scheduled" if due is not None else "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        record.update(fields)
        flat = [item for pair in record.items() for item in pair]
        idem_key, ttl = (idempotency_key(idempotency[0]), idempotency[1]) if idempotency else ("", 0)
        result = self._create(
            keys=[
                email_key(email_id),
                payload_key(email_id),
                idem_key,
                SCHEDULED,
                PENDING,
                METRICS,
                message[0] if message else "",
                *(recipient_key(address) for address in recipients or []),
            ],
            args=[
                email_id,
                pack_payload(payload),
                ttl,
                "" if due is None else due,
                self.status_ttl + 31 * 86400,
                message[1] if message else "",
                *flat,
            ],
            client=pipeline,
        )
        return email_id if pipeline is not None else str(result)

    def create_batch(self, batch_id: str, ids: list[str], template: str) -> None:
        """Record a bulk send: its size and its emails' ids."""
        key, ttl = f"{PREFIX}batch:{batch_id}", self.status_ttl + 31 * 86400
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={"id": batch_id, "total": len(ids), "template": template, "created_at": now_iso()},
            )
            pipe.rpush(f"{key}:emails", *ids)
            pipe.expire(key, ttl)
            pipe.expire(f"{key}:emails", ttl)
            pipe.execute()

    def batch_summary(self, batch_id: str) -> dict[str, Any] | None:
        """The batch's size and how many of its emails are in each status; None if unknown."""
        key = f"{PREFIX}batch:{batch_id}"
        record = self.client.hgetall(key)
        if not record:
            return None
        ids = [str(i) for i in self.client.lrange(f"{key}:emails", 0, -1)]
        counts: dict[str, int] = {}
        for start in range(0, len(ids), 1000):
            with self.client.pipeline(transaction=False) as pipe:
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

    def discard(self, email_id: str) -> None:
        """Remove every trace of an email that could not be queued (its queued count included)."""
        priority = str(self.client.hget(email_key(email_id), "priority") or "transactional")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(METRICS, f"queued|{priority}", -1)
            pipe.delete(email_key(email_id), payload_key(email_id), attempts_key(email_id))
            pipe.zrem(SCHEDULED, email_id)
            pipe.zrem(PENDING, email_id)
            pipe.execute()

    def begin_attempt(
        self, email_id: str, worker: str, lease: str, lease_seconds: float, break_lease: str = ""
    ) -> tuple[str, str | None, int, float, str]:
        """Take the email's lease and mark it sending.

        Returns (status, payload or lease holder, attempt number, creation time, priority).

        ``sending`` means deliver now (the payload is returned). ``leased``
        means another sender holds the lease: the holder and the lease's
        remaining milliseconds are returned. ``unknown`` means the previous
        attempt (its number is returned) got as far as DATA and its sender is
        gone: the caller holds the lease and must dead-letter the email.
        Anything else (``missing``, ``sent``, ``failed``, ``expired``,
        ``scheduled``) means nothing to do.
        """
        found = self._begin(
            keys=[email_key(email_id), payload_key(email_id), lease_key(email_id), PENDING, METRICS],
            args=[now_iso(), worker, lease, int(lease_seconds * 1000), time.time(), break_lease, email_id],
        )
        status, payload, number = found[0], found[1], found[2]
        created = float(found[3]) if len(found) > 3 and found[3] else 0.0
        priority = str(found[4]) if len(found) > 4 else "transactional"
        if status == "sending" and payload:
            payload = unpack_payload(str(payload))
        return str(status), payload if payload else None, int(number), created, priority

    def mark_data_started(self, email_id: str, attempt: int) -> None:
        """Attempt ATTEMPT is about to send DATA: if it is interrupted, never send the email again."""
        self.client.hset(email_key(email_id), "data_attempt", attempt)

    def mark_retrying(self, email_id: str, attempt: Attempt, next_attempt_at: str, priority: str) -> None:
        """The attempt failed transiently; another is scheduled."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(METRICS, f"retried|{priority}|{attempt['error_class']}", 1)
            pipe.rpush(attempts_key(email_id), _json(attempt))
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
            pipe.delete(lease_key(email_id))
            pipe.execute()

    def mark_sent(
        self, email_id: str, attempt: Attempt, refused: list[dict[str, Any]], priority: str, latency: float
    ) -> None:
        """The SMTP server accepted the message: record it, drop the content, let it expire."""
        fields: dict[str, str] = {
            "status": "sent",
            "updated_at": attempt["finished_at"],
            "sent_at": attempt["finished_at"],
            "next_attempt_at": "",
        }
        if refused:
            fields["refused"] = _json(refused)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(email_key(email_id), mapping=cast(_Mapping, fields))
            pipe.rpush(attempts_key(email_id), _json(attempt))
            pipe.delete(payload_key(email_id), lease_key(email_id))
            pipe.zrem(PENDING, email_id)
            pipe.zrem(FAILED_INDEX, email_id)  # the server took it: never a dead letter
            pipe.hincrby(METRICS, f"sent|{priority}", 1)
            _observe(pipe, LATENCY, LATENCY_BUCKETS, latency)
            _observe(pipe, SEND_DURATION, DURATION_BUCKETS, attempt["duration_ms"] / 1000)
            pipe.expire(email_key(email_id), self.status_ttl)
            pipe.expire(attempts_key(email_id), self.status_ttl)
            pipe.execute()

    def mark_failed(self, email_id: str, attempt: Attempt, priority: str | None = None) -> None:
        """Delivery gave up: keep the record and payload (no expiry) in the dead-letter index."""
        if priority is None:
            priority = str(self.client.hget(email_key(email_id), "priority") or "transactional")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(METRICS, f"failed|{priority}|{attempt.get('error_class') or 'unknown'}", 1)
            pipe.rpush(attempts_key(email_id), _json(attempt))
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
            pipe.zadd(FAILED_INDEX, {email_id: time.time()})
            pipe.zrem(PENDING, email_id)
            pipe.delete(lease_key(email_id))
            pipe.execute()

    def fail_if_sending(self, email_id: str, attempt: Attempt) -> bool:
        """mark_failed, but only while the email is still sending (a late, parent-side verdict)."""
        if self.client.hget(email_key(email_id), "status") != "sending":
            return False
        self.mark_failed(email_id, attempt)
        return True

    def requeue(self, email_id: str) -> bool:
        """Turn a failed email back into a queued one (the caller publishes it).

        False if it is not failed, or its content was purged.
        """
        entry = event("requeued")
        done = self._requeue(
            keys=[email_key(email_id), attempts_key(email_id), FAILED_INDEX, payload_key(email_id), PENDING],
            args=[email_id, entry["started_at"], _json(entry)],
        )
        return bool(done)

    def schedule(self, email_id: str, due: float, next_attempt_at: str | None = None) -> None:
        """Hold the email in Redis until DUE (epoch seconds); the scheduler publishes it then."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(SCHEDULED, {email_id: due})
            if next_attempt_at is not None:
                pipe.hset(email_key(email_id), "next_attempt_at", next_attempt_at)
            pipe.execute()

    def published(self, email_id: str) -> None:
        """A message for the email was just published: it is pending from now."""
        now = time.time()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(email_key(email_id), "published_ts", repr(now))
            pipe.zadd(PENDING, {email_id: now})
            pipe.execute()

    def due(self, now: float, limit: int = 500) -> list[str]:
        """Scheduled ids whose time has come, oldest first."""
        return [str(i) for i in self.client.zrangebyscore(SCHEDULED, "-inf", now, start=0, num=limit)]

    def release(self, email_id: str) -> tuple[str, str] | None:
        """Mark a due email queued (if it was scheduled); return (status, queue), None if it is gone."""
        found = self._release(keys=[email_key(email_id)], args=[now_iso()])
        return (str(found[0]), str(found[1])) if found else None

    def unschedule(self, email_id: str) -> None:
        self.client.zrem(SCHEDULED, email_id)

    def failed(self, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        """Failed email ids with their failure time, newest first, older than BEFORE if given."""
        top = f"({before}" if before is not None else "+inf"
        rows = self.client.zrevrangebyscore(FAILED_INDEX, top, "-inf", start=0, num=limit, withscores=True)
        return [(str(member), float(score)) for member, score in cast(list[tuple[str, float]], rows)]

    def purge(self, email_id: str) -> str | None:
        """Drop the email's stored content (cancelling it if unsent); its status, or None if unknown."""
        status = self._purge(
            keys=[email_key(email_id), payload_key(email_id), PENDING, SCHEDULED, lease_key(email_id)],
            args=[email_id, now_iso()],
        )
        return str(status) if status else None

    def emails_to(self, address: str) -> list[str]:
        """Ids of the emails sent to ADDRESS (to, cc or bcc) that are still on record."""
        return sorted(str(i) for i in self.client.hkeys(recipient_key(address)))

    def forget_recipient(self, address: str) -> None:
        self.client.delete(recipient_key(address))

    def get(self, email_id: str) -> dict[str, Any] | None:
        """The record with its timeline, or None if the id was never queued."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(email_key(email_id))
            pipe.lrange(attempts_key(email_id), 0, -1)
            record, attempts = pipe.execute()
        if not record:
            return None
        result: dict[str, Any] = dict(record)
        result.pop("expires_ts", None)
        result.pop("published_ts", None)
        result.pop("created_ts", None)
        result["attempts"] = int(record.get("attempts", 0))
        result["refused"] = json.loads(record["refused"]) if record.get("refused") else []
        result["timeline"] = [json.loads(item) for item in attempts]
        return result


_stores: dict[tuple[int, int], StatusStore] = {}


def get_store() -> StatusStore:
    """The store for the configured Redis (one per client and TTL)."""
    settings = get_settings()
    client = get_redis(settings.redis_url)
    key = (id(client), settings.email_status_ttl)
    store = _stores.get(key)
    if store is None or store.client is not client:
        store = _stores[key] = StatusStore(client, settings.email_status_ttl)
    return store


def unavailable(exc: redis.RedisError | OSError) -> QueueUnavailable:
    """A QueueUnavailable naming the Redis URL (password hidden)."""
    url = safe_url(get_settings().redis_url)
    return QueueUnavailable(f"cannot reach Redis at {url}: {type(exc).__name__}")
