"""The ``send_email`` task: queue with ``send_email.delay(to=[...], subject=..., ...)``.

Queueing validates the email, writes its record and payload to Redis, and
publishes a message that carries only the email id (so Flower, the broker and
the result backend never hold addresses or bodies). The worker loads the
payload, renders, sends, and writes every status change.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
import redis
from celery import Task
from celery.exceptions import Reject
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from neoforge.backoff import retry_delay
from neoforge.delivery import build_message, deliver, run_in_worker_loop
from neoforge.enqueue import check_renders, validate
from neoforge.errors import PermanentDeliveryError, TransientDeliveryError
from neoforge.logs import log_event
from neoforge.message import EmailRequest
from neoforge.redact import mask_addresses
from neoforge.settings import get_settings
from neoforge.store import Attempt, get_store, now_iso, unavailable
from neoforge.templates import Rendered, render
from tasks.app import app

__all__ = ["EmailTask", "send_email"]

logger = logging.getLogger(__name__)


class EmailTask(Task):  # type: ignore[misc]
    """A task whose ``apply_async`` queues a validated, recorded email under a new id."""

    def apply_async(
        self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        if args and len(args) == 1 and not kwargs:
            # An email that already has a record: Celery's retry, or a requeue.
            return super().apply_async(args, None, **options)
        if args:
            raise TypeError("send_email takes keyword arguments only: send_email.delay(to=[...], ...)")
        request = validate(kwargs or {})
        return self.enqueue(request, **options)

    def enqueue(self, request: EmailRequest, *, checked: bool = False, **options: Any) -> AsyncResult:
        """Record REQUEST as queued and publish it; raise QueueUnavailable if Redis is down.

        Nothing is left behind on failure: the record is written before the
        message is published (so the status is ``queued`` the moment the id
        exists) and removed again if the publish fails.
        """
        if not checked:
            check_renders(request)
        email_id = str(uuid.uuid4())
        store = get_store()
        fields: dict[str, str | int] = {
            "template": request.template or "",
            "recipients": len(request.recipients()),
            "queue": options.get("queue") or "transactional",
        }
        try:
            store.create(email_id, request.model_dump_json(), fields)
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        try:
            result = super().apply_async((email_id,), None, task_id=email_id, **options)
        except (OperationalError, redis.RedisError, OSError) as exc:
            try:
                store.discard(email_id)
            except redis.RedisError:
                logger.warning("email.discard_failed", extra={"fields": {"id": email_id}})
            raise unavailable(exc if isinstance(exc, redis.RedisError) else redis.ConnectionError()) from exc
        log_event(logger, "email.queued", id=email_id, template=request.template, queue=fields["queue"])
        return result


def _attempt(number: int, started: str, t0: float, worker: str, outcome: str, **extra: Any) -> Attempt:
    return {
        "attempt": number,
        "started_at": started,
        "finished_at": now_iso(),
        "duration_ms": round((time.monotonic() - t0) * 1000, 1),
        "worker": worker,
        "outcome": outcome,
        **extra,
    }


def _body(request: EmailRequest) -> Rendered:
    if request.template is not None:
        return render(request.template, request.context)
    return Rendered(html=request.html, text=request.text)


@app.task(bind=True, base=EmailTask, name="neoforge.send_email", max_retries=None)
def send_email(self: EmailTask, email_id: str) -> dict[str, Any]:
    """Deliver the email EMAIL_ID; retry transient failures, dead-letter permanent ones."""
    settings = get_settings()
    store = get_store()
    worker = self.request.hostname or socket.gethostname()
    status, payload, number = store.begin_attempt(email_id, worker)
    if status != "sending" or payload is None:
        log_event(logger, "email.skipped", id=email_id, status=status)
        return {"id": email_id, "status": status, "skipped": True}
    log_event(logger, "email.sending", id=email_id, attempt=number, worker=worker)
    started, t0 = now_iso(), time.monotonic()
    try:
        try:
            request = EmailRequest.model_validate_json(payload)
            message = run_in_worker_loop(build_message(email_id, request, _body(request)))
        except (ValidationError, jinja2.TemplateError, ValueError) as exc:
            raise PermanentDeliveryError(
                f"message cannot be built: {type(exc).__name__}", None, "bad_message"
            ) from exc
        accepted = run_in_worker_loop(deliver(message, request.recipients()))
    except TransientDeliveryError as exc:
        details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
        if number > settings.email_max_retries:
            store.mark_failed(email_id, _attempt(number, started, t0, worker, "failed", **details))
            log_event(
                logger,
                "email.failed",
                logging.WARNING,
                id=email_id,
                attempt=number,
                smtp_code=exc.code,
                error_class=exc.error_class,
                reason="retries exhausted",
            )
            raise
        delay = retry_delay(number, settings.email_retry_backoff, settings.email_retry_backoff_max)
        next_at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat().replace("+00:00", "Z")
        attempt = _attempt(number, started, t0, worker, "retry", retry_in=round(delay, 3), **details)
        store.mark_retrying(email_id, attempt, next_at)
        log_event(
            logger,
            "email.retrying",
            id=email_id,
            attempt=number,
            smtp_code=exc.code,
            error_class=exc.error_class,
            retry_in=round(delay, 3),
        )
        try:
            raise self.retry(exc=exc, countdown=delay) from exc
        except Reject as rejected:
            # Celery turns a failed re-publish into Reject(requeue=False), which
            # would drop the email: put the message back instead.
            raise Reject(rejected.reason, requeue=True) from exc
    except PermanentDeliveryError as exc:
        details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
        store.mark_failed(email_id, _attempt(number, started, t0, worker, "failed", **details))
        log_event(
            logger,
            "email.failed",
            logging.WARNING,
            id=email_id,
            attempt=number,
            smtp_code=exc.code,
            error_class=exc.error_class,
        )
        raise
    except redis.RedisError as exc:
        # The status store is unreachable: hand the message back rather than
        # acknowledge it; if Redis is down too, it stays unacknowledged and
        # the transport restores it after the visibility timeout.
        log_event(logger, "email.requeued", logging.WARNING, id=email_id, reason=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        # A defect of ours: dead-letter the email with the error type, so it
        # can be requeued once fixed, and let Celery log the traceback.
        details = {"error": f"internal error: {type(exc).__name__}", "error_class": "internal"}
        store.mark_failed(email_id, _attempt(number, started, t0, worker, "failed", **details))
        raise
    attempt = _attempt(number, started, t0, worker, "sent", smtp_reply=mask_addresses(accepted.reply[:200]))
    store.mark_sent(email_id, attempt, accepted.refused)
    log_event(
        logger,
        "email.sent",
        id=email_id,
        attempt=number,
        duration_ms=attempt["duration_ms"],
        refused=len(accepted.refused),
    )
    return {"id": email_id, "status": "sent", "attempt": number}
