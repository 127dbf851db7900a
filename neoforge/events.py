"""Delivery events: what happened to an email, for the app (signal) and its webhook (signed POST).

``announce`` builds one event and sends the ``email_event`` signal
(neoforge/signals.py); the Celery glue (tasks/webhooks.py) listens and, with
EMAIL_WEBHOOK_URL set, queues its delivery on the ``webhooks`` queue. The
POST carries ``X-NeoForge-Timestamp`` and ``X-NeoForge-Signature``: the hex
HMAC-SHA256, keyed with EMAIL_WEBHOOK_SECRET, of ``timestamp.body``. An event
never carries the message body, and carries addresses (otherwise masked) only
with EMAIL_WEBHOOK_INCLUDE_ADDRESS=true. Deliveries that give up are kept in
a dead-letter list (``give_up``) and can be queued again (``requeue_failed``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

import redis

from neoforge.logs import log_event
from neoforge.settings import Settings
from neoforge.signals import email_event
from neoforge.store import now_iso
from neoforge.store.keys import METRICS, WEBHOOKS_FAILED

__all__ = ["EventType", "WebhookError", "announce", "failed", "give_up", "post", "requeue_failed", "sign"]

logger = logging.getLogger(__name__)

EventType = Literal["sent", "deferred", "failed", "suppressed", "expired", "unsubscribed"]
_KEEP_FAILED = 10_000  # dead-lettered webhook deliveries kept (oldest dropped first)


class WebhookError(Exception):
    """Raised when the webhook receiver cannot be reached or does not answer 2xx (retried)."""


def announce(
    settings: Settings, kind: EventType, email_id: str, *, status: str, attempt: int = 0,
    recipients: Sequence[dict[str, Any]] = (), **details: Any,
) -> dict[str, Any]:  # fmt: skip
    """Send the ``email_event`` signal for KIND; return the event.

    RECIPIENTS: ``{"address", "masked", "outcome"}`` each; the address is kept
    only with EMAIL_WEBHOOK_INCLUDE_ADDRESS, the masked form otherwise.
    """
    include = settings.email_webhook_include_address
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": f"email.{kind}",
        "email_id": email_id,
        "status": status,
        "attempt": attempt,
        "occurred_at": now_iso(),
        **{key: value for key, value in details.items() if value not in (None, "")},
    }
    if recipients:
        event["recipients"] = [
            {"address": r["address"] if include and r.get("address") else r["masked"], **_outcome(r)}
            for r in recipients
        ]
    email_event.send(sender="neoforge", event=event)
    return event


def _outcome(recipient: dict[str, Any]) -> dict[str, Any]:
    return {"outcome": recipient["outcome"]}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``TIMESTAMP.BODY`` keyed with SECRET (X-NeoForge-Signature)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def post(settings: Settings, event: dict[str, Any]) -> int:
    """POST EVENT, signed, to EMAIL_WEBHOOK_URL; the 2xx status, or raise WebhookError."""
    if not settings.email_webhook_url:
        raise WebhookError("EMAIL_WEBHOOK_URL is not set")
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    secret = settings.email_webhook_secret.get_secret_value() if settings.email_webhook_secret else ""
    request = urllib.request.Request(  # noqa: S310 (the URL is checked to be http(s) by the settings)
        settings.email_webhook_url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "NeoForge-Mail-Webhook/1",
            "X-NeoForge-Event": str(event.get("type", "")),
            "X-NeoForge-Timestamp": timestamp,
            "X-NeoForge-Signature": sign(secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.email_webhook_timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"receiver answered {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"receiver unreachable: {type(reason).__name__}") from exc


def give_up(client: redis.Redis, event: dict[str, Any], error: str, attempts: int) -> None:
    """Keep EVENT's delivery as a dead letter (its error, how many tries); counted in /metrics."""
    entry = json.dumps({"event": event, "error": error, "attempts": attempts, "failed_at": now_iso()})
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(WEBHOOKS_FAILED, entry)
        pipe.ltrim(WEBHOOKS_FAILED, 0, _KEEP_FAILED - 1)
        pipe.hincrby(METRICS, "webhook|failed", 1)
        pipe.execute()
    log_event(logger, "webhook.failed", logging.WARNING, event_id=str(event.get("id")),
              type=event.get("type"), id=event.get("email_id"), error=error, attempts=attempts)  # fmt: skip


def failed(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """Dead-lettered webhook deliveries, newest first."""
    return [json.loads(raw) for raw in client.lrange(WEBHOOKS_FAILED, 0, limit - 1)]


def requeue_failed(client: redis.Redis, publish: Callable[[dict[str, Any]], None], limit: int = 1000) -> int:
    """PUBLISH the events of up to LIMIT dead-lettered deliveries (oldest first); each leaves the list
    once published, so a failed publish loses none. Returns how many were published."""
    done = 0
    for raw in reversed(client.lrange(WEBHOOKS_FAILED, -limit, -1)):
        publish(json.loads(raw)["event"])
        client.lrem(WEBHOOKS_FAILED, 1, str(raw))
        done += 1
    return done
