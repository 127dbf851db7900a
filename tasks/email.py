"""The ``send_email`` task: queue with ``send_email.delay(to=[...], subject=..., ...)``.

Queueing validates the email, writes its record and payload to Redis, and
publishes a message that carries only the email id (so Flower, the broker and
the result backend never hold addresses or bodies). The worker takes the
email's lease, loads the payload, renders, sends, and writes every status
change; the record doubles as the delivery ledger, so a redelivered message
for a sent email sends nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
import redis
from celery import Task
from celery.exceptions import Reject, TimeLimitExceeded
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from neoforge.backoff import retry_delay
from neoforge.delivery import Accepted, build_message, deliver, run_in_worker_loop
from neoforge.enqueue import check_renders, validate
from neoforge.errors import DeliveryError, PermanentDeliveryError, QueueUnavailable, TransientDeliveryError
from neoforge.logs import log_event
from neoforge.message import EmailRequest
from neoforge.redact import mask_addresses
from neoforge.scheduler import max_broker_delay
from neoforge.settings import get_settings
from neoforge.staging import envelope
from neoforge.store import Attempt, StatusStore, event, get_store, iso, now_iso, unavailable
from neoforge.templates import Rendered, render
from tasks.app import app

__all__ = ["EmailTask", "send_email"]

logger = logging.getLogger(__name__)

_PUBLISH_ERRORS = (OperationalError, redis.RedisError, OSError)


class EmailTask(Task):  # type: ignore[misc]
    """A task whose ``apply_async`` queues a validated, recorded email under a new id."""

    # Expected outcomes, not defects: Celery logs them in one line, without a
    # traceback (whose chained aiosmtplib error would carry the raw address).
    throws = (PermanentDeliveryError, TransientDeliveryError)

    def apply_async(
        self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        if args and len(args) == 1 and not kwargs:
            # An email that already has a record: Celery's retry, a requeue, a release.
            return self._publish(str(args[0]), options)
        if args:
            raise TypeError("send_email takes keyword arguments only: send_email.delay(to=[...], ...)")
        request = validate(kwargs or {})
        return self.enqueue(request, checked=True, **options)

    def _publish(self, email_id: str, options: dict[str, Any]) -> AsyncResult:
        settings = get_settings()
        # The first publish is already in the pending index (store.create).
        first = options.pop("first_publish", False)
        delay = options.get("countdown") or 0.0
        if options.get("eta") is not None:
            delay = (options["eta"] - datetime.now(UTC)).total_seconds()
        if delay > max_broker_delay(settings):
            # Too long for the broker (see neoforge/scheduler.py): Redis holds it.
            due = time.time() + delay
            get_store().schedule(email_id, due, iso(datetime.fromtimestamp(due, UTC)))
            return self.AsyncResult(email_id)
        options["task_id"] = email_id
        try:
            result = super().apply_async((email_id,), None, **options)
        except _PUBLISH_ERRORS as exc:
            raise unavailable(
                exc if isinstance(exc, redis.RedisError | OSError) else OSError(str(exc))
            ) from exc
        if not first:
            # If this fails the message is out anyway; the recovery sweep merely looks later.
            with contextlib.suppress(redis.RedisError):
                get_store().published(email_id)
        return result

    def enqueue(self, request: EmailRequest, *, checked: bool = False, **options: Any) -> AsyncResult:
        """Record REQUEST and publish it (or hold it until ``send_at``); return its result handle."""
        email_id, _ = self.queue_request(request, checked=checked, **options)
        return self.AsyncResult(email_id)

    def queue_request(
        self, request: EmailRequest, *, checked: bool = False, **options: Any
    ) -> tuple[str, str | None]:
        """Record and publish REQUEST; return (id, "queued" or "scheduled"), or (earlier id, None).

        Nothing is left behind on failure: the record is written before the
        message is published (so the status is ``queued`` the moment the id
        exists) and removed again if the publish fails. With an
        ``idempotency_key`` seen within the window, the earlier id is returned
        and nothing new is queued. Raises QueueUnavailable if Redis is down.
        """
        if not checked:
            check_renders(request)
        settings = get_settings()
        email_id = str(uuid.uuid4())
        queue = options.pop("queue", None) or request.priority
        fields, due = _record_fields(request, queue)
        idempotency = (
            (request.idempotency_key, settings.email_idempotency_window) if request.idempotency_key else None
        )
        store = get_store()
        try:
            recorded = store.create(
                email_id,
                request.model_dump_json(),
                fields,
                idempotency=idempotency,
                due=due,
                recipients=request.recipients(),
            )
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        if recorded != email_id:
            log_event(logger, "email.duplicate", id=recorded)
            return recorded, None
        if due is None:
            try:
                self._publish(email_id, {**options, "queue": queue, "first_publish": True})
            except QueueUnavailable:
                if request.idempotency_key:
                    # Another request may already hold this id through the key:
                    # keep the record; the recovery sweep publishes it later.
                    raise
                try:
                    store.discard(email_id)
                except redis.RedisError:
                    log_event(logger, "email.discard_failed", logging.WARNING, id=email_id)
                raise
        log_event(
            logger,
            "email.queued",
            id=email_id,
            status="queued" if due is None else "scheduled",
            template=request.template,
            queue=queue,
            scheduled=due is not None,
        )
        return email_id, "queued" if due is None else "scheduled"

    def queue_bulk(self, requests: list[EmailRequest], batch_id: str) -> list[str]:
        """Record and publish many checked emails in chunks; return their ids (in order).

        Records are written 500 to a Redis pipeline and messages published in
        kombu producer batches, not one round trip per email. If Redis fails
        part-way, QueueUnavailable is raised; the emails already recorded are
        in the pending index, so the recovery sweep still publishes them.
        """
        store = get_store()
        ids = [str(uuid.uuid4()) for _ in requests]
        try:
            for start in range(0, len(ids), 500):
                chunk = list(zip(ids[start : start + 500], requests[start : start + 500], strict=True))
                to_publish = []
                with store.client.pipeline(transaction=False) as pipe:
                    for email_id, request in chunk:
                        fields, due = _record_fields(request, request.priority)
                        fields["batch"] = batch_id
                        store.create(email_id, request.model_dump_json(), fields, due=due,
                                     recipients=request.recipients(), pipeline=pipe)  # fmt: skip
                        if due is None:
                            to_publish.append((email_id, request.priority))
                    pipe.execute()
                with self.app.producer_or_acquire() as producer, producer.batch(max_size=1000):
                    for email_id, queue in to_publish:
                        super().apply_async(
                            (email_id,), None, task_id=email_id, queue=queue, producer=producer
                        )
            store.create_batch(batch_id, ids, requests[0].template or "")
        except (*_PUBLISH_ERRORS,) as exc:
            raise unavailable(
                exc if isinstance(exc, redis.RedisError | OSError) else OSError(str(exc))
            ) from exc
        log_event(logger, "batch.queued", batch=batch_id, emails=len(ids))
        return ids

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded):
            # The pool killed the task: we cannot know how far the SMTP
            # dialogue got, so a person decides (requeue) rather than risk a
            # second copy.
            error = f"task time limit exceeded ({exc})"
            entry = event("failed", error, "time_limit", self.request.hostname or "")
            # Only if the killed child did not record an outcome first.
            with contextlib.suppress(redis.RedisError):
                if get_store().fail_if_sending(task_id, entry):
                    log_event(logger, "email.failed", logging.WARNING, id=task_id, error_class="time_limit")


def _record_fields(request: EmailRequest, queue: str) -> tuple[dict[str, str | int], float | None]:
    """The status record's fields for a new email, and when it is due (None: now)."""
    fields: dict[str, str | int] = {
        "created_ts": repr(time.time()),
        "template": request.template or "",
        "recipients": len(request.recipients()),
        "queue": queue,
        "priority": request.priority,
    }
    if request.expires_at is not None:
        fields["expires_at"] = iso(request.expires_at)
        fields["expires_ts"] = repr(request.expires_at.timestamp())
    due = None
    if request.send_at is not None and request.send_at.timestamp() > time.time():
        due = request.send_at.timestamp()
        fields["send_at"] = fields["next_attempt_at"] = iso(request.send_at)
    return fields, due


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


def _host() -> str:
    # Host name and PID namespace together: two containers may share a host
    # name, and a PID means something only within its namespace.
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}~{namespace}"


_HOST = _host()


def _holder_is_dead(holder: str) -> bool:
    """True when the lease HOLDER ("host|pid|token") is a process of this host and namespace that is gone."""
    host, _, rest = holder.partition("|")
    pid = rest.partition("|")[0]
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie (a killed pool child not yet reaped) is dead too.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _record_sent(
    store: StatusStore, email_id: str, attempt: Attempt, accepted: Accepted, priority: str, latency: float
) -> None:
    # The server has the message: from here on, a retry would send it twice.
    # Keep trying to write the ledger for a while; if Redis stays away, the
    # message is still acknowledged (the email was delivered) and the gap is logged.
    deadline = time.monotonic() + 30
    while True:
        try:
            store.mark_sent(email_id, attempt, accepted.refused, priority, latency)
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                log_event(
                    logger, "email.sent_unrecorded", logging.ERROR, id=email_id, reason=type(exc).__name__
                )
                return
            time.sleep(0.5)


@app.task(bind=True, base=EmailTask, name="neoforge.send_email", max_retries=None)
def send_email(self: EmailTask, email_id: str) -> dict[str, Any]:
    """Deliver the email EMAIL_ID; retry transient failures, dead-letter permanent ones."""
    settings = get_settings()
    store = get_store()
    worker = self.request.hostname or socket.gethostname()
    lease = f"{_HOST}|{os.getpid()}|{uuid.uuid4().hex}"
    lease_seconds = settings.email_task_time_limit + 5
    try:
        status, payload, number, created, priority = store.begin_attempt(
            email_id, worker, lease, lease_seconds
        )
        if status == "leased" and payload is not None and _holder_is_dead(payload):
            # Its sender was killed (a pool child, say): take over at once.
            status, payload, number, created, priority = store.begin_attempt(
                email_id, worker, lease, lease_seconds, payload
            )
    except redis.RedisError as exc:
        raise Reject(exc, requeue=True) from exc
    if status == "leased":
        # Someone else is sending it right now. Look again once their lease
        # is over: by then it is sent, or their sender is gone.
        log_event(logger, "email.leased", id=email_id)
        try:
            raise self.retry(countdown=max(1.0, number / 1000))
        except Reject as rejected:  # the re-publish failed: keep the message (see below)
            raise Reject(rejected.reason, requeue=True) from None
    if status != "sending" or payload is None:
        log_event(logger, "email.skipped", id=email_id, status=status)
        return {"id": email_id, "status": status, "skipped": True}
    log_event(logger, "email.sending", id=email_id, status="sending", attempt=number, worker=worker)
    started, t0 = now_iso(), time.monotonic()
    # The attempt must end well inside its lease (time limit + 5 s): prefork's
    # hard time limit is a backstop only, and the threads pool has none.
    limit = settings.email_task_time_limit
    deadline = t0 + limit - min(10.0, limit / 4)

    def fail(exc: DeliveryError, **extra: Any) -> None:
        details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
        attempt = _attempt(number, started, t0, worker, "failed", **details)
        store.mark_failed(email_id, attempt, priority)
        log_event(logger, "email.failed", logging.WARNING, id=email_id, status="failed", attempt=number,
                  smtp_code=exc.code, error_class=exc.error_class, duration_ms=attempt["duration_ms"],
                  worker=worker, **extra)  # fmt: skip

    try:
        try:
            request = EmailRequest.model_validate_json(payload)
            message = run_in_worker_loop(build_message(email_id, request, _body(request)))
        except (ValidationError, jinja2.TemplateError, ValueError) as exc:
            raise PermanentDeliveryError(
                f"message cannot be built: {type(exc).__name__}", None, "bad_message"
            ) from exc
        recipients, held = envelope(request.recipients(), settings)
        if not recipients:
            raise PermanentDeliveryError("no recipient in EMAIL_ALLOWED_DOMAINS", None, "not_allowed")
        accepted = run_in_worker_loop(deliver(message, recipients, max(0.5, deadline - time.monotonic())))
        if held:
            accepted = Accepted(accepted.reply, [*accepted.refused, *held])
    except TransientDeliveryError as exc:
        if number > settings.email_max_retries:
            fail(exc, reason="retries exhausted")
            raise
        details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
        delay = retry_delay(number, settings.email_retry_backoff, settings.email_retry_backoff_max)
        next_at = iso(datetime.now(UTC) + timedelta(seconds=delay))
        attempt = _attempt(number, started, t0, worker, "retry", retry_in=round(delay, 3), **details)
        try:
            store.mark_retrying(email_id, attempt, next_at, priority)
        except redis.RedisError as rexc:
            raise Reject(rexc, requeue=True) from exc
        log_event(
            logger,
            "email.retrying",
            id=email_id,
            status="retrying",
            attempt=number,
            smtp_code=exc.code,
            error_class=exc.error_class,
            duration_ms=attempt["duration_ms"],
            retry_in=round(delay, 3),
            worker=worker,
        )
        try:
            raise self.retry(exc=exc, countdown=delay) from exc
        except Reject as rejected:
            # Celery turns a failed re-publish into Reject(requeue=False), which
            # would drop the email: hand the message back instead (if Redis is
            # down too, it stays unacknowledged and comes back after the
            # visibility timeout).
            raise Reject(rejected.reason, requeue=True) from exc
    except PermanentDeliveryError as exc:
        fail(exc)
        raise
    except redis.RedisError as exc:
        # Redis went away before anything was sent: hand the message back.
        log_event(logger, "email.requeued", logging.WARNING, id=email_id, reason=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        # A defect of ours: dead-letter the email with the error type, so it
        # can be requeued once fixed, and let Celery log the traceback.
        details = {"error": f"internal error: {type(exc).__name__}", "error_class": "internal"}
        store.mark_failed(email_id, _attempt(number, started, t0, worker, "failed", **details), priority)
        raise
    attempt = _attempt(number, started, t0, worker, "sent", smtp_reply=mask_addresses(accepted.reply[:200]))
    _record_sent(store, email_id, attempt, accepted, priority, time.time() - created if created else 0.0)
    log_event(
        logger,
        "email.sent",
        id=email_id,
        status="sent",
        attempt=number,
        duration_ms=attempt["duration_ms"],
        refused=len(accepted.refused),
        worker=worker,
    )
    return {"id": email_id, "status": "sent", "attempt": number}
