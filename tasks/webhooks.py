"""The ``deliver_webhook`` task: POST one delivery event to EMAIL_WEBHOOK_URL, retried with backoff.

Events are announced by the core (neoforge/events.py) through the
``email_event`` signal; the receiver here queues one task per event on the
``webhooks`` queue, which every worker consumes. A delivery that fails
(unreachable, or not 2xx) is retried with exponential backoff and jitter up
to EMAIL_WEBHOOK_MAX_RETRIES times, then kept as a dead letter
(``neoforge webhooks failed``, ``GET /webhooks/failed``) and counted in
/metrics; ``requeue_failed_webhooks`` queues them again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from kombu.exceptions import OperationalError

from neoforge.events import WebhookError, give_up, post, requeue_failed
from neoforge.logs import log_event
from neoforge.retry import retry_delay
from neoforge.runtime import current
from neoforge.scheduler import max_broker_delay
from neoforge.settings import get_settings
from neoforge.signals import email_event
from neoforge.store.keys import METRICS
from tasks.app import app

__all__ = ["deliver_webhook", "requeue_failed_webhooks"]

logger = logging.getLogger(__name__)


@app.task(bind=True, name="neoforge.deliver_webhook", max_retries=None, acks_late=True)
def deliver_webhook(self: Task, event: dict[str, Any]) -> dict[str, Any]:
    """POST EVENT to the receiver; retry on failure; a dead letter once retries are spent."""
    settings = get_settings()
    client = current().redis
    tries = int(self.request.retries) + 1
    try:
        code = post(settings, event)
    except WebhookError as exc:
        if tries > settings.email_webhook_max_retries:
            give_up(client, event, str(exc), tries)
            return {"event": event.get("id"), "status": "failed", "attempts": tries}
        # Countdowns stay short enough for the broker (see neoforge/scheduler.py).
        cap = min(settings.email_webhook_retry_backoff_max, max_broker_delay(settings))
        delay = retry_delay(tries, min(settings.email_webhook_retry_backoff, cap), cap)
        client.hincrby(METRICS, "webhook|retried", 1)
        log_event(logger, "webhook.retrying", event_id=str(event.get("id")), error=str(exc), attempt=tries,
                  retry_in=round(delay, 3))  # fmt: skip
        raise self.retry(countdown=delay, exc=exc) from None
    client.hincrby(METRICS, "webhook|delivered", 1)
    log_event(logger, "webhook.delivered", event_id=str(event.get("id")), type=event.get("type"), code=code,
              attempt=tries)  # fmt: skip
    return {"event": event.get("id"), "status": "delivered", "attempts": tries}


def _publish(event: dict[str, Any]) -> None:
    deliver_webhook.apply_async((event,))


def requeue_failed_webhooks(limit: int = 1000) -> int:
    """Queue the dead-lettered webhook deliveries again (oldest first); how many were queued."""
    return requeue_failed(current().redis, _publish, limit)


@email_event.connect
def _queue_webhook(sender: Any = None, event: dict[str, Any] | None = None, **_: Any) -> None:
    # Every process that imports the tasks (workers, the API) sends its events on.
    if event is None or not get_settings().email_webhook_url:
        return
    try:
        _publish(event)
    except (redis.RedisError, OSError, OperationalError) as exc:
        # The email's own outcome is recorded already; the event is lost, and said so.
        log_event(logger, "webhook.not_queued", logging.ERROR, event_id=str(event.get("id")),
                  reason=type(exc).__name__)  # fmt: skip
