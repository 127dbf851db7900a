"""The ``send_email`` task: queue with ``send_email.delay(to=[...], subject=..., ...)``.

Every standard way in works: ``delay``/``apply_async`` with Celery's options
(a caller's ``task_id`` becomes the email id, ``countdown``/``eta`` delay it,
``expires`` becomes its ``expires_at``, ``queue``/``priority`` route it),
canvas (``group``, ``chain``, ``chord``, ``link``, ``link_error``), and clients
that only know the task's name (``send_task``, ``celery call``, Flower).

Through ``apply_async`` (app code, the API, canvas, Flower's async-apply) the
email is validated and recorded first, and its message carries only the id.
A client that publishes by name puts the fields in the message instead: the
worker validates and records them under the message id (neoforge/enqueue.py
``adopt``). Either way a worker then runs the one per-email state machine
(neoforge/attempt.py) and turns its outcome into a return value, a retry or a
rejection.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, TimeLimitExceeded
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps, loads

from neoforge.attempt import Outcome, run
from neoforge.enqueue import adopt, check_renders, discard_quietly, due_time, iso_ts, record, validate
from neoforge.errors import PermanentDeliveryError, QueueUnavailable, TransientDeliveryError
from neoforge.message import EmailRequest
from neoforge.redis_client import unavailable
from neoforge.runtime import current
from neoforge.scheduler import max_broker_delay
from neoforge.settings import get_settings
from neoforge.store import event
from neoforge.store.admission import Charge
from tasks.app import app
from tasks.many import CHUNK, send_many
from tasks.wire import message_for

__all__ = ["EmailTask", "publish_error", "send_email", "settle"]

_PUBLISH_ERRORS = (OperationalError, redis.RedisError, OSError)
# Options that ride the broker message and must come back with an email held
# in Redis (a long countdown, send_at): callbacks and the rest of a canvas.
_CARRIED = ("link", "link_error", "chain", "chord", "group_id", "group_index", "root_id", "parent_id")


def publish_error(exc: BaseException) -> QueueUnavailable:
    """The QueueUnavailable (or QueueFull) for a failed publish; kombu's OperationalError wraps the cause."""
    cause = exc if isinstance(exc, redis.RedisError | OSError) else (exc.__cause__ or exc.__context__)
    return unavailable(cause if isinstance(cause, redis.RedisError | OSError) else OSError(str(exc)))


def _delay(options: dict[str, Any]) -> float:
    """Seconds until due, from Celery's ``countdown`` or ``eta`` (both removed from OPTIONS)."""
    countdown = options.pop("countdown", None)
    eta = options.pop("eta", None)
    if eta is not None:
        when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return max(0.0, float(countdown or 0))


def _expires_at(expires: Any) -> datetime:
    """Celery's ``expires`` (seconds from now, a datetime or an ISO string) as an aware datetime."""
    if isinstance(expires, int | float):
        return datetime.now(UTC) + timedelta(seconds=float(expires))
    when = expires if isinstance(expires, datetime) else datetime.fromisoformat(str(expires))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _carried(options: dict[str, Any]) -> str:
    kept = {key: options[key] for key in _CARRIED if options.get(key)}
    return str(dumps(kept)) if kept else ""


class EmailTask(Task):  # type: ignore[misc]
    """``send_email``'s base: queueing validates and records an email before its message is published."""

    # Expected outcomes, not defects: Celery logs them in one line, without a
    # traceback (whose chained aiosmtplib error would carry the raw address).
    throws = (PermanentDeliveryError, TransientDeliveryError)
    Request = "tasks.request:RedactingRequest"

    def apply_async(
        self, args: tuple[Any, ...] | list[Any] | None = None, kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:  # fmt: skip
        fields = dict(kwargs or {})
        named = fields.pop("email_id", None)
        if not fields:
            # An email that has a record already: a retry, a requeue, a release.
            email_id = named or (args[0] if args and isinstance(args[0], str) else None)
            if email_id is None:
                raise TypeError(
                    "send_email needs the email's fields: send_email.delay(to=[...], subject=..., ...)"
                )
            return self.publish(str(email_id), **options)
        if named is not None:
            raise TypeError("send_email takes either email_id or the email's fields, not both")
        # In a chain, the previous task's result comes first: it is not part of this email.
        if any(not isinstance(arg, dict | list | tuple) and arg is not None for arg in args or ()):
            raise TypeError("send_email takes keyword arguments only: send_email.delay(to=[...], ...)")
        request = validate(fields)
        expires = options.pop("expires", None)
        if expires is not None and request.expires_at is None:
            # Celery's meaning: never run after this. Already past (a race, or
            # on purpose) is not bad input: the worker ends it expired, unsent.
            request = request.model_copy(update={"expires_at": _expires_at(expires)})
        result, _ = self.queue_request(request, checked=True, **options)
        return result

    def queue_request(
        self, request: EmailRequest, *, checked: bool = False, charge: Charge | None = None, **options: Any
    ) -> tuple[AsyncResult, str | None]:
        """``enqueue``, with the email's AsyncResult instead of its id."""
        email_id, status = self.enqueue(request, checked=checked, charge=charge, **options)
        return self.AsyncResult(email_id), status

    def enqueue(
        self, request: EmailRequest, *, checked: bool = False, charge: Charge | None = None, **options: Any
    ) -> tuple[str, str | None]:
        """Record REQUEST and publish its message; return (email id, "queued" or "scheduled").

        No AsyncResult: Celery builds a result backend for every thread that
        makes its first one (entry points read, a connection pool), which the
        API's thread pool paid inside requests (a profile of POST /emails).

        Its template is rendered once first (a missing variable is the
        caller's InvalidEmail), unless CHECKED says ``validate`` did that.
        The record, its message and an API key's CHARGE go to Redis in one
        round trip where tasks/wire.py can build the message (RateLimited
        past the charge, nothing queued); otherwise Celery publishes after.

        With an ``idempotency_key`` seen within its window, or a ``task_id``
        already used, nothing is queued: the earlier email's result and None.
        Nothing is left behind on failure: if the publish fails, the record is
        removed again (kept with an idempotency key, which another request may
        hold: the recovery sweep publishes it). Raises QueueUnavailable.
        """
        if not checked:
            check_renders(request)
        settings = get_settings()
        rt = current()
        # Refused before Redis's own limit: the rest is for the workers' writes.
        rt.capacity.check_queueing()
        store = rt.store
        queue = options.pop("queue", None) or request.priority
        email_id = str(options.pop("task_id", None) or uuid.uuid4())
        delay = _delay(options)
        due = due_time(request, delay if delay > max_broker_delay(settings) else None, store.clock)
        publish = message_for(self, email_id, queue, delay or None, options) if due is None else None
        try:
            recorded, status = record(store, request, email_id, queue, settings, due=due,
                                      carried=_carried(options), publish=publish, charge=charge)  # fmt: skip
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        if status is None or due is not None or publish is not None:
            return recorded, status
        try:
            self._send(email_id, queue, countdown=delay or None, **options)
        except QueueUnavailable:
            if not request.idempotency_key:
                discard_quietly(store, email_id)
            raise
        return email_id, status

    def send_many(
        self, emails: Iterable[Mapping[str, Any]], *, queue: str | None = None, chunk: int = CHUNK
    ) -> list[str]:
        """Queue many different emails (each as ``delay``'s keyword arguments), CHUNK to a Redis transaction.

        Returns their ids in order; see tasks/many.py for the errors.
        """
        return send_many(self, emails, queue=queue, chunk=chunk)

    def publish(
        self, email_id: str, *, first: bool = False, carried: str = "", **options: Any
    ) -> AsyncResult:
        """Publish the message of EMAIL_ID, which has a record (or hold it in Redis if due later).

        FIRST: the record was just put in the pending index. CARRIED: options
        saved with the record when it was held (callbacks, chain), as JSON.
        """
        options.pop("task_id", None)  # a retry names it; it is the email id anyway
        if carried:
            options = {**loads(carried), **options}
        delay = _delay(options)
        if delay > max_broker_delay(get_settings()):
            # Too long for the broker (see neoforge/scheduler.py): Redis holds it.
            try:
                store = current().store
                due = store.clock() + delay  # Redis's clock, as the scheduler reads it
                store.schedule(email_id, due, iso_ts(due), _carried(options))
            except redis.RedisError as exc:
                raise unavailable(exc) from exc
            return self.AsyncResult(email_id)
        result = self._send(email_id, options.pop("queue", None), countdown=delay or None, **options)
        if not first:
            # If this fails the message is out anyway; the recovery sweep merely looks later.
            with contextlib.suppress(redis.RedisError):
                current().store.published(email_id)
        return result

    def _send(self, email_id: str, queue: str | None, **options: Any) -> AsyncResult:
        if queue:
            options["queue"] = queue
        try:
            return super().apply_async(
                (email_id,), {}, task_id=email_id, argsrepr="()", kwargsrepr=f"{{'email_id': '{email_id}'}}",
                **options,
            )  # fmt: skip
        except _PUBLISH_ERRORS as exc:
            raise publish_error(exc) from exc

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded):
            # The pool killed the task: we cannot know how far the SMTP
            # dialogue got, so a person decides (requeue) rather than risk a
            # second copy. Only if the killed child did not record an outcome.
            entry = event(
                "failed", f"task time limit exceeded ({exc})", "time_limit", self.request.hostname or ""
            )
            with contextlib.suppress(redis.RedisError):
                current().store.fail_if_sending(task_id, entry)


def settle(task: Task, outcome: Outcome) -> dict[str, Any]:
    """Turn OUTCOME into what Celery expects: a result, an exception, a retry or a rejection."""
    if outcome.kind == "sent" or (outcome.kind == "done" and outcome.status == "sent"):
        return {**outcome.result(), "status": "sent"}
    if outcome.kind == "failed" and outcome.error is not None:
        raise outcome.error
    if outcome.kind == "done":
        if outcome.status in ("failed", "expired", "cancelled", "suppressed"):
            raise PermanentDeliveryError(f"not sent: the email is {outcome.status}", None, outcome.status)
        # Scheduled for later, or no record left: nothing final to report now.
        raise Ignore()
    if outcome.kind in ("retry", "busy"):
        try:
            raise task.retry(args=(outcome.email_id,), kwargs={}, countdown=outcome.delay, exc=outcome.error)
        except Reject as rejected:
            # Celery turns a failed re-publish into Reject(requeue=False), which
            # would drop the email: hand the message back instead (if Redis is
            # down too, it comes back after the visibility timeout).
            raise Reject(rejected.reason, requeue=True) from None
    raise Reject(outcome.cause, requeue=True)


@app.task(bind=True, base=EmailTask, name="neoforge.send_email", max_retries=None)
def send_email(self: EmailTask, *args: Any, **fields: Any) -> dict[str, Any]:
    """Deliver one email: by id, or from its fields when a client published it by name."""
    rt = current()
    worker = self.request.hostname or socket.gethostname()
    email_id = str(
        fields.pop("email_id", None) or (args[0] if args and isinstance(args[0], str) else self.request.id)
    )
    if fields:
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        try:
            adopted = adopt(rt.store, self.request.id, fields, queue, rt.settings, worker)
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        if isinstance(adopted, PermanentDeliveryError):
            raise adopted
        email_id, status = adopted
        if status is None and email_id != self.request.id:
            # Its idempotency key named an earlier email: that one is the email.
            return {"id": email_id, "status": "duplicate", "attempt": 0}
    return settle(self, run(rt, email_id, worker))
