"""Recovery sweep: find emails whose broker message was lost, and publish them again.

Kombu's Redis transport takes a message with BRPOP and only then records it
as unacknowledged: if Redis goes down between the two, or the publish after
our record was written never happened (a crash), the message is gone while
the record still says queued. The record and the ``neoforge:pending`` index
let us notice. An email is lost when, longer than the grace period after it
was published, it is unfinished and its message is nowhere: not waiting in
its queue (its queue's oldest waiting message was published after it), not
unacknowledged in some worker's hands, not held by the scheduler, and no
live sender holds its lease. Publishing it again is safe: the delivery
ledger turns any second message for the same email into a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from neoforge.broker import UNACKED, message_ids, published_at
from neoforge.logs import log_event
from neoforge.store import TERMINAL, StatusStore
from neoforge.store.keys import PENDING, SCHEDULED, email_key, lease_key

__all__ = ["sweep_lost"]

logger = logging.getLogger(__name__)


def _oldest_published(client: redis.Redis, queue: str) -> float:
    """When the oldest message still waiting in QUEUE was published; now if the queue is empty."""
    raw = client.lindex(queue, -1)
    ids = message_ids(raw) if raw else []
    if not ids:
        return time.time()
    return published_at(client, ids[0]) or 0.0


def sweep_lost(store: StatusStore, grace: float, publish: Callable[[str, str, str], None]) -> int:
    """Publish again every email lost for longer than GRACE seconds; return how many."""
    client = store.client
    candidates = [
        str(i) for i in client.zrangebyscore(PENDING, "-inf", time.time() - grace, start=0, num=500)
    ]
    if not candidates:
        return 0
    in_hand = {email_id for raw in client.hvals(UNACKED) for email_id in message_ids(raw)}
    oldest: dict[str, float] = {}
    recovered = 0
    for email_id in candidates:
        status, queue, published, carried = client.hmget(
            email_key(email_id), ["status", "queue", "published_ts", "celery"]
        )
        if status is None or status in TERMINAL:
            client.zrem(PENDING, email_id)
            continue
        if status == "scheduled" or email_id in in_hand or client.zscore(SCHEDULED, email_id) is not None:
            continue
        if client.exists(lease_key(email_id)):
            continue
        queue = str(queue or "transactional")
        if queue not in oldest:
            oldest[queue] = _oldest_published(client, queue)
        if published is not None and float(str(published)) >= oldest[queue]:
            continue  # still waiting its turn in the queue
        publish(email_id, queue, str(carried or ""))
        recovered += 1
        log_event(logger, "email.recovered", logging.WARNING, id=email_id, status=status)
    return recovered
