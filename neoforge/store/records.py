"""Where statuses are written: each email's record, payload, timeline and delivery ledger.

A record exists from the moment an id is handed out (or, for a message a
client published straight to the broker, from the moment a worker first sees
it), so an id with no record was never queued: that is a 404, never Celery's
ambiguous PENDING. The record is also the delivery ledger: once it says
``sent``, no redelivered or duplicate message sends the email again. Key
names live in neoforge/store/keys.py, the atomic steps in neoforge/store/lua/.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from neoforge.errors import LeaseLost
from neoforge.store.admission import Charge, Publish
from neoforge.store.encoding import (
    Attempt,
    as_json,
    bucket,
    compact_outcomes,
    event,
    in_order,
    now_iso,
    pack_payload,
    per_minute,
    unpack_payload,
)
from neoforge.store.fencing import AttemptWrites
from neoforge.store.indexes import Indexes
from neoforge.store.keys import (
    ALIVE,
    FAILED,
    LATENCY,
    METRICS,
    MINUTE_TTL,
    PENDING,
    SCHEDULED,
    SEND_DURATION,
    attempts_key,
    email_key,
    idempotency_key,
    lease_key,
    minute_key,
    payload_key,
    recipient_key,
)
from neoforge.store.scripts import Scripts

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "TERMINAL",
    "StatusStore",
]

# Histogram bucket bounds in seconds (Prometheus ``le``).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Statuses an email never leaves (but for a requeue of a failed one).
TERMINAL = frozenset({"sent", "failed", "expired", "cancelled", "suppressed"})

_Mapping = Any  # redis-py's stub wants an invariant key type that no plain dict has


class StatusStore(Indexes, AttemptWrites):
    """Reads and writes email records; every write is one atomic Redis round trip."""

    def __init__(self, client: redis.Redis, status_ttl: int) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self.scripts = Scripts(client)

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
        publish: Publish | None = None,
        charge: Charge | None = None,
    ) -> tuple[str, bool]:
        """Record a new email (queued, or scheduled when DUE is given); return (id, created).

        An id that has a record already, or an IDEMPOTENCY (key, seconds) used
        within its window, writes nothing: the earlier email's id is returned
        with ``created`` False. With a PIPELINE the write is only queued on it
        (the caller executes it) and (EMAIL_ID, True) is returned. PUBLISH (a due-now email's
        broker message) is pushed with the record; CHARGE counted first (RateLimited past it).
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
        result = self.scripts.create(
            keys=[
                email_key(email_id),
                payload_key(email_id),
                idem_key,
                SCHEDULED,
                PENDING,
                METRICS,
                publish.list_key if publish else "",
                *(charge[:2] if charge else ("", "")),
                *(recipient_key(address) for address in recipients or []),
            ],
            args=[
                email_id,
                pack_payload(payload),
                ttl,
                "" if due is None else due,
                self.status_ttl + 31 * 86400,
                publish.entry if publish else "",
                *(charge[2:6] if charge else (0, 0, 0, 0)),
                *flat,
            ],
            client=pipeline,
        )
        if pipeline is not None:
            return email_id, True
        if int(result[1]) < 0 and charge is not None:
            charge.check(int(result[2]), int(result[3]))
        return str(result[0]), int(result[1]) == 1

    def finish_new(self, email_id: str, status: str, fields: dict[str, str | int], entry: Attempt) -> bool:
        """Record EMAIL_ID as STATUS (failed or expired) before it was ever queued; False if it has a record.

        For a message a worker cannot use (its fields are not a valid email)
        or one Celery expired before it ran. No content is kept, so it cannot
        be requeued; a failed one is a dead letter.
        """
        now = entry["finished_at"]
        priority = str(fields.get("priority") or "transactional")
        record: dict[str, str | int] = {
            "id": email_id,
            "status": status,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            **fields,
        }
        if status == "failed":
            record.update(failed_at=now, last_error=entry["error"], error_class=entry["error_class"])
            counter = f"failed|{priority}|{entry['error_class']}"
        else:
            counter = f"expired|{priority}"
        flat = [item for pair in record.items() for item in pair]
        done = self.scripts.finish_new(
            keys=[email_key(email_id), attempts_key(email_id), FAILED if status == "failed" else "", METRICS],
            args=[email_id, time.time(), as_json(entry), counter, self.status_ttl + 31 * 86400, *flat],
        )
        if done and status == "failed":
            with self.client.pipeline(transaction=False) as pipe:
                per_minute(pipe, "failed")
                pipe.execute()
        return bool(done)

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
        self, email_id: str, worker: str, lease: str, lease_seconds: float, heartbeat_seconds: float,
        break_lease: str = "",
    ) -> tuple[str, str | None, int, float, str, str, str, str, str]:  # fmt: skip
        """Take the email's lease and mark it sending (and renew this process's heartbeat).

        Returns (status, payload or lease holder, attempt number, creation time,
        priority, recipients left (JSON, or ""), recipient outcomes so far (JSON, or ""),
        the attempt's fence, the silent holder whose lease was taken over (or "")).

        ``sending`` means deliver now (the payload is returned); ``expired_now``: this call expired it.
        ``leased`` means another live sender holds the lease: the holder and the lease's
        remaining milliseconds are returned. ``unknown`` means the previous
        attempt (its number is returned) got as far as DATA and its sender is
        gone: the caller holds the lease and must dead-letter the email.
        Anything else (``missing``, ``sent``, ``failed``, ``expired``,
        ``scheduled``) means nothing to do.
        """
        found = self.scripts.begin(
            keys=[email_key(email_id), payload_key(email_id), lease_key(email_id), PENDING, METRICS],
            args=[now_iso(), worker, lease, int(lease_seconds * 1000), int(heartbeat_seconds * 1000),
                  break_lease, email_id, ALIVE],
        )  # fmt: skip
        status, payload, number = found[0], found[1], found[2]
        if status == "expired" and len(found) > 3:
            return "expired_now", None, 0, 0.0, "transactional", "", "", "", ""
        created = float(found[3]) if len(found) > 3 and found[3] else 0.0
        priority = str(found[4] or "transactional") if len(found) > 4 else "transactional"
        todo, outcomes = (str(found[5] or ""), str(found[6] or "")) if len(found) > 6 else ("", "")
        # The attempt's fencing token: the take's count and its holder (lua/mark_data.lua says why both).
        fence, silent = (f"{found[7]}|{lease}", str(found[8] or "")) if len(found) > 8 else ("", "")
        if status == "sending" and payload:
            payload = unpack_payload(str(payload))
        return (str(status), payload if payload else None, int(number), created, priority, todo, outcomes,
                fence, silent)  # fmt: skip

    def mark_sent(
        self,
        email_id: str,
        attempt: Attempt,
        priority: str,
        latency: float,
        extra: dict[str, str] | None = None,
        fence: str = "",
    ) -> None:
        """The SMTP server accepted the message: record it (EXTRA: recipient outcomes), drop the content.

        The record shrinks to its compact sent form (lua/sent.lua drops what only an
        unfinished email needs; the outcomes are ``compact_outcomes``). Fits in a full
        Redis (it frees first); a second call for the same email changes nothing.
        Raises LeaseLost when FENCE is stale (another sender took the email over): nothing recorded.
        """
        fields: dict[str, str] = {
            "status": "sent",
            "updated_at": attempt["finished_at"],
            "sent_at": attempt["finished_at"],
            **(extra or {}),
        }
        if fields.get("outcomes"):
            fields["outcomes"] = compact_outcomes(fields["outcomes"], str(attempt.get("smtp_reply") or ""))
        duration = attempt["duration_ms"] / 1000
        provider = f"provider_sent|{attempt['provider']}" if attempt.get("provider") else ""
        done = self.scripts.sent(
            keys=[email_key(email_id), attempts_key(email_id), payload_key(email_id), lease_key(email_id),
                  PENDING, FAILED, METRICS, LATENCY, SEND_DURATION, minute_key(int(time.time() // 60))],
            args=[email_id, as_json(fields), as_json(attempt), f"sent|{priority}",
                  bucket(LATENCY_BUCKETS, latency), latency, bucket(DURATION_BUCKETS, duration), duration,
                  self.status_ttl, MINUTE_TTL, provider, fence],
        )  # fmt: skip
        if int(done) < 0:
            raise LeaseLost(email_id, "sent")

    def requeue(self, email_id: str) -> bool:
        """Turn a failed email back into a queued one (the caller publishes it).

        False if it is not failed, or its content was purged.
        """
        entry = event("requeued")
        done = self.scripts.requeue(
            keys=[email_key(email_id), attempts_key(email_id), FAILED, payload_key(email_id), PENDING],
            args=[email_id, entry["started_at"], as_json(entry)],
        )
        return bool(done)

    def purge(self, email_id: str) -> str | None:
        """Drop the email's stored content (cancelling it if unsent); its status, or None if unknown."""
        status = self.scripts.purge(
            keys=[email_key(email_id), payload_key(email_id), PENDING, SCHEDULED, lease_key(email_id)],
            args=[email_id, now_iso()],
        )
        return str(status) if status else None

    def content(self, email_id: str) -> str | None:
        """The email's stored request (JSON) while it is kept, else None."""
        stored = self.client.get(payload_key(email_id))
        return unpack_payload(str(stored)) if stored else None

    def get(self, email_id: str) -> dict[str, Any] | None:
        """The record with its timeline, or None if the id was never queued."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(email_key(email_id))
            pipe.lrange(attempts_key(email_id), 0, -1)
            record, attempts = pipe.execute()
        if not record:
            return None
        result: dict[str, Any] = dict(record)
        result["id"] = email_id  # a sent record does not repeat its id
        result.pop("expires_ts", None)
        result.pop("published_ts", None)
        result.pop("created_ts", None)
        result.pop("celery", None)
        result.pop("data_attempt", None)
        result.pop("fence", None)
        result.pop("fence_holder", None)
        result["attempts"] = int(record.get("attempts", 0))
        result.pop("rcpt_todo", None)
        result["timeline"] = [json.loads(item) for item in attempts]
        if "worker" not in result and result["timeline"]:
            result["worker"] = result["timeline"][-1].get("worker")  # not kept in the compact sent form
        sent = [entry for entry in result["timeline"] if entry.get("outcome") == "sent"]
        reply = str(sent[-1].get("smtp_reply") or "") if sent else ""
        result["outcomes"] = in_order(str(record.get("outcomes") or ""), reply)
        return result
