"""The indexes around the records: emails held until due, published and unfinished, failed, per recipient."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from neoforge.store.encoding import now_iso
from neoforge.store.keys import (
    FAILED,
    PENDING,
    SCHEDULED,
    email_key,
    lease_key,
    legacy_recipient_key,
    recipient_key,
)
from neoforge.store.scripts import Scripts

__all__ = ["Indexes"]

_Mapping = Any  # redis-py's stub wants an invariant key type that no plain dict has


class Indexes:
    """Reads and writes of the scheduled set, the pending and dead-letter indexes and the recipient index."""

    client: redis.Redis
    scripts: Scripts

    def schedule(self, email_id: str, due: float, next_attempt_at: str, carried: str = "") -> None:
        """Hold the email in Redis until DUE (epoch seconds); the scheduler publishes it then.

        CARRIED (JSON) is what Celery must get back with that message: callbacks, the rest of a chain.
        """
        fields = {"next_attempt_at": next_attempt_at}
        if carried:
            fields["celery"] = carried
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(SCHEDULED, {email_id: due})
            pipe.hset(email_key(email_id), mapping=cast(_Mapping, fields))
            pipe.execute()

    def clock(self) -> float:
        """Now by Redis's clock (epoch seconds): every host reads the same one, skewed or not."""
        seconds, micros = self.client.time()
        return float(seconds + micros / 1e6)

    def published(self, email_id: str) -> None:
        """A message for the email was just published: it is pending from now (Redis's clock)."""
        self.scripts.published(keys=[PENDING, email_key(email_id)], args=["first", email_id])

    def republished(self, email_ids: Sequence[str]) -> None:
        """A message for these emails was published again: those still pending are pending from now."""
        # Only those still pending: an email finished (or gone) meanwhile stays out of the index.
        self.scripts.published(keys=[PENDING], args=["again", *email_ids])

    def unplaced(self, email_ids: Sequence[str], final: Iterable[str]) -> list[tuple[str, str, str, str]]:
        """Of EMAIL_IDS, those unfinished and neither scheduled nor leased: (id, status, queue, carried).

        The finished ones (no record, or a status in FINAL) leave the pending index.
        """
        keys = [PENDING, SCHEDULED]
        for email_id in email_ids:
            keys += [email_key(email_id), lease_key(email_id)]
        flat = [str(v) for v in self.scripts.unplaced(keys=keys, args=[" ".join(final), *email_ids])]
        return [(flat[n], flat[n + 1], flat[n + 2], flat[n + 3]) for n in range(0, len(flat), 4)]

    def due(self, now: float, limit: int = 500) -> list[str]:
        """Scheduled ids whose time has come, oldest first."""
        return [str(i) for i in self.client.zrangebyscore(SCHEDULED, "-inf", now, start=0, num=limit)]

    def release(self, email_id: str) -> tuple[str, str, str] | None:
        """Mark a due email queued (if it was scheduled); (status, queue, carried options) or None if gone."""
        found = self.scripts.release(keys=[email_key(email_id)], args=[now_iso()])
        return (str(found[0]), str(found[1]), str(found[2])) if found else None

    def unschedule(self, email_id: str) -> None:
        self.client.zrem(SCHEDULED, email_id)

    def failed(self, limit: int, before: float | None = None) -> list[tuple[str, float]]:
        """Failed email ids with their failure time, newest first, older than BEFORE if given."""
        top = f"({before}" if before is not None else "+inf"
        rows = self.client.zrevrangebyscore(FAILED, top, "-inf", start=0, num=limit, withscores=True)
        return [(str(member), float(score)) for member, score in cast(list[tuple[str, float]], rows)]

    def emails_to(self, address: str) -> list[str]:
        """Ids of the emails to ADDRESS (to, cc or bcc) created in the last EMAIL_STATUS_TTL + 31 days."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrange(recipient_key(address), 0, -1)
            pipe.hkeys(legacy_recipient_key(address))
            current, legacy = pipe.execute()
        return sorted({str(i) for i in [*current, *legacy]})

    def forget_recipient(self, address: str) -> None:
        self.client.delete(recipient_key(address), legacy_recipient_key(address))
