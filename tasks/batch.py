"""The ``send_batch`` task: many bulk emails from one message, their SMTP dialogues side by side.

At most half a worker process's threads run batches (``Runtime.batch_gate``);
their dialogues wait for bulk mail's share of the SMTP connections on the
sender loop. A batch that finds the gate full waits for it a quarter of a
second at most, then is published again with a 1-2 s countdown (the same ids
and task id) and its message acknowledged. Celery keeps a countdown message in
the consumer's timer, not in a pool thread, and raises the prefetch window by one for it
(celery/worker/strategy.py: ``qos.increment_eventually`` before ``call_at``),
so the threads and the prefetch window stay free for transactional mail
however large the bulk backlog. The message published again carries the same
email ids; the ledger skips any already sent.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from collections.abc import Sequence
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, TimeLimitExceeded
from kombu.exceptions import OperationalError

from neoforge.attempt import Outcome, run_many
from neoforge.errors import ErrorClass, PermanentDeliveryError, QueueUnavailable, TransientDeliveryError
from neoforge.logs import log_event
from neoforge.runtime import current
from neoforge.store import event
from tasks.app import app
from tasks.email import publish_error, send_email

__all__ = ["publish_batches", "send_batch"]

logger = logging.getLogger(__name__)


class BatchTask(Task):  # type: ignore[misc]
    """``send_batch``'s base: a pool kill past the time limit dead-letters what was mid-send."""

    throws = (PermanentDeliveryError, TransientDeliveryError)
    Request = "tasks.request:RedactingRequest"

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            # As for send_email: nobody can tell how far those dialogues got.
            entry = event(
                "failed", f"task time limit exceeded ({exc})", "time_limit", self.request.hostname or ""
            )
            for email_id in args[0]:
                with contextlib.suppress(redis.RedisError):
                    current().store.fail_if_sending(email_id, entry)


def publish_batches(emails: Sequence[tuple[str, str]], size: int) -> None:
    """Publish EMAILS ((id, queue) pairs) as ``send_batch`` messages of up to SIZE ids per queue."""
    by_queue: dict[str, list[str]] = {}
    for email_id, queue in emails:
        by_queue.setdefault(queue, []).append(email_id)
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for queue, ids in by_queue.items():
                for start in range(0, len(ids), size):
                    send_batch.apply_async((ids[start : start + size],), queue=queue, producer=producer)
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise publish_error(exc) from exc


# Seconds before a batch that found every slot taken looks again: soon, but
# spread, so that waiting batches neither come back together nor spin.
_WAIT_MIN, _WAIT_SPREAD = 1.0, 1.0


def _wait_for_slot(task: BatchTask, email_ids: list[str], queue: str) -> dict[str, int]:
    """Hand the batch back to come again in 1-2 s (a new message, same ids and task id); the thread is freed.

    Published here, and the task ends: ``Task.retry`` would capture the
    traceback (billiard's ExceptionInfo), store a RETRY state and log it for
    every wait, and in a bulk backlog most batch messages wait several times:
    that was a fifth of a worker's CPU in bulk sends (bench --profile, (c), (g)).
    """
    try:
        # Its emails are pending from now: the recovery sweep must not take
        # them, waiting in their queue again, for lost ones.
        current().store.republished(email_ids)
        task.apply_async(
            (email_ids,), task_id=task.request.id, queue=queue,
            countdown=_WAIT_MIN + random.random() * _WAIT_SPREAD,
        )  # fmt: skip
    except (OperationalError, redis.RedisError, OSError) as exc:
        # Not published: hand this message back instead (late ack), nothing is lost.
        raise Reject(exc, requeue=True) from exc
    return {"sent": 0, "failed": 0, "retrying": 0, "skipped": 0, "deferred": len(email_ids)}


@app.task(bind=True, base=BatchTask, name="neoforge.send_batch", max_retries=None)
def send_batch(self: BatchTask, email_ids: list[str]) -> dict[str, int]:
    """Deliver many bulk emails from one message, their SMTP dialogues side by side.

    Each email is handled exactly as ``send_email`` handles one: its own
    lease, status, attempt timeline, retries (published as its own
    ``send_email`` message) and dead letter; its result is stored under its
    own id. The message is acknowledged once every email has an outcome; if
    Redis fails part-way it is handed back, and the ledger skips the emails
    already sent when it comes again.
    """
    rt = current()
    queue = (self.request.delivery_info or {}).get("routing_key") or "bulk"
    # Half the threads at most run batches (module docstring). A batch waits
    # here a quarter of a second at most, then in Celery's timer: a pool
    # thread held by bulk is one transactional mail lacks, and publishing it
    # again for every brief wait would cost more than the wait.
    if not rt.batch_gate.acquire(timeout=0.25):
        return _wait_for_slot(self, email_ids, queue)
    try:
        worker = self.request.hostname or socket.gethostname()
        outcomes = run_many(rt, email_ids, worker, bulk=True)
    finally:
        rt.batch_gate.release()
    counts = {"sent": 0, "failed": 0, "retrying": 0, "skipped": 0, "deferred": 0}
    down: BaseException | None = None
    for outcome in outcomes:
        if outcome.kind == "unavailable":
            down = down or outcome.cause
        elif outcome.kind in ("retry", "busy"):
            try:
                send_email.publish(outcome.email_id, queue=queue, countdown=outcome.delay)
            except QueueUnavailable as exc:
                down = redis.ConnectionError(str(exc))
            counts["retrying" if outcome.kind == "retry" else "deferred"] += 1
        else:
            counts[_count(outcome)] += 1
            _store_result(self, outcome)
    if down is not None:
        # Hand the whole message back: what was sent is skipped next time.
        log_event(
            logger, "batch.requeued", logging.WARNING, emails=len(email_ids), reason=type(down).__name__
        )
        raise Reject(down, requeue=True)
    return counts


def _count(outcome: Outcome) -> str:
    if outcome.kind == "done":
        return "skipped"
    return "sent" if outcome.kind == "sent" else "failed"


def _store_result(task: BatchTask, outcome: Outcome) -> None:
    # Each email's own result, as send_email would store it (AsyncResult(email_id) works).
    with contextlib.suppress(redis.RedisError):
        if outcome.kind == "sent":
            task.app.backend.mark_as_done(outcome.email_id, {**outcome.result(), "status": "sent"})
        elif outcome.kind == "failed" and outcome.error is not None:
            task.app.backend.mark_as_failure(outcome.email_id, outcome.error)
        elif outcome.kind == "done" and outcome.status == "suppressed":
            # As send_email ends it: not sent, for good (AsyncResult.get() raises).
            error = PermanentDeliveryError("not sent: the email is suppressed", None, ErrorClass.SUPPRESSED)
            task.app.backend.mark_as_failure(outcome.email_id, error)
