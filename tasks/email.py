"""The ``send_email`` task: queue with ``send_email.delay(to=[...], subject=..., ...)``.

Queueing validates the email, writes its record and payload to Redis, and
publishes a message that carries only the email id (so Flower, the broker and
the result backend never hold addresses or bodies). The worker takes the
email's lease, loads the payload, renders, sends, and writes every status
change; the record doubles as the delivery ledger, so a redelivered message
for a sent email sends nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from neoforge.delivery import (
    Accepted,
    build_message,
    bulk_connections,
    deliver,
    run_in_worker_loop,
    submit,
)
from neoforge.enqueue import check_renders, validate
from neoforge.errors import DeliveryError, PermanentDeliveryError, QueueUnavailable, TransientDeliveryError
from neoforge.logs import log_event
from neoforge.message import EmailRequest
from neoforge.redact import mask_addresses
from neoforge.scheduler import max_broker_delay
from neoforge.settings import Settings, get_settings
from neoforge.staging import envelope
from neoforge.store import Attempt, StatusStore, event, get_store, iso, now_iso, unavailable
from neoforge.templates import Rendered, render
from neoforge.transport import Transport as CapturingTransport
from neoforge.transport import capture
from tasks.app import app

__all__ = ["EmailTask", "send_batch", "send_email"]

logger = logging.getLogger(__name__)

_PUBLISH_ERRORS = (OperationalError, redis.RedisError, OSError)


def _publish_failed(exc: BaseException) -> QueueUnavailable:
    """The QueueUnavailable for a failed publish (kombu's OperationalError carries only text)."""
    return unavailable(exc if isinstance(exc, redis.RedisError | OSError) else OSError(str(exc)))


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
            raise _publish_failed(exc) from exc
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

        Nothing is left behind on failure: the record and the message are
        written by one Lua script, all or nothing (where the broker transport is
        not ours, the record is written first and removed again if the publish
        fails). With an
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
        # The message, built by Celery and kombu but not yet pushed: the record
        # and the message then reach Redis in one script, all or nothing.
        message = self._capture(email_id, queue, options) if due is None else None
        try:
            recorded = store.create(
                email_id,
                request.model_dump_json(),
                fields,
                idempotency=idempotency,
                due=due,
                recipients=request.recipients(),
                message=message,
            )
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        if recorded != email_id:
            log_event(logger, "email.duplicate", id=recorded)
            return recorded, None
        if due is None and message is None:
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

    def _capture(self, email_id: str, queue: str, options: dict[str, Any]) -> tuple[str, str] | None:
        """EMAIL_ID's message as (queue key, body), built but not pushed; None where that cannot be.

        Only our transport (neoforge/transport.py) can hand a message back,
        and only a message due now goes straight to its queue.
        """
        if options.get("countdown") or options.get("eta") is not None:
            return None
        given = options.get("producer")
        try:
            with contextlib.nullcontext(given) if given else self.app.producer_or_acquire() as producer:
                if not isinstance(producer.connection.transport, CapturingTransport):
                    return None
                with capture() as captured:
                    super().apply_async(
                        (email_id,), None, task_id=email_id, queue=queue, **{**options, "producer": producer}
                    )
        except _PUBLISH_ERRORS as exc:
            raise _publish_failed(exc) from exc
        if len(captured) != 1:
            raise RuntimeError(f"expected one captured message, got {len(captured)}")
        return captured[0]

    def queue_bulk(self, requests: list[EmailRequest], batch_id: str) -> list[str]:
        """Record and publish many checked emails in chunks; return their ids (in order).

        Records are written 500 to a Redis pipeline; the emails go out as
        ``send_batch`` messages of EMAIL_BULK_BATCH_SIZE ids, published in
        kombu producer batches: not one round trip, nor one message, per email. If Redis fails
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
                _publish_batches(to_publish, get_settings().email_bulk_batch_size)
            store.create_batch(batch_id, ids, requests[0].template or "")
        except _PUBLISH_ERRORS as exc:
            raise _publish_failed(exc) from exc
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


def _publish_batches(emails: Sequence[tuple[str, str]], size: int) -> None:
    """Publish EMAILS ((id, queue) pairs) as ``send_batch`` messages of up to SIZE ids per queue."""
    by_queue: dict[str, list[str]] = {}
    for email_id, queue in emails:
        by_queue.setdefault(queue, []).append(email_id)
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for queue, ids in by_queue.items():
            for start in range(0, len(ids), size):
                send_batch.apply_async((ids[start : start + size],), queue=queue, producer=producer)


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


def _persist(write: Callable[[], None], seconds: float = 30.0) -> None:
    """WRITE, tried again every half second for up to SECONDS while Redis is unreachable.

    For outcomes the server gave us: lose one, and the email's ledger keeps
    its "DATA began" mark, so the email ends as an ``outcome_unknown`` dead
    letter instead of being retried or marked sent. Raises the last error.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            write()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _record_sent(
    store: StatusStore, email_id: str, attempt: Attempt, accepted: Accepted, priority: str, latency: float
) -> None:
    # The server has the message. If Redis stays away, the message is still
    # acknowledged (the email was delivered) and the gap is logged; the
    # ledger's "DATA began" mark keeps any later message from sending it again.
    try:
        _persist(lambda: store.mark_sent(email_id, attempt, accepted.refused, priority, latency))
    except redis.RedisError as exc:
        log_event(logger, "email.sent_unrecorded", logging.ERROR, id=email_id, reason=type(exc).__name__)


@dataclass
class _Attempting:
    """One email whose lease we hold, mid-attempt."""

    email_id: str
    number: int
    created: float
    priority: str
    worker: str
    started: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.monotonic)

    def attempt(self, outcome: str, **extra: Any) -> Attempt:
        return _attempt(self.number, self.started, self.t0, self.worker, outcome, **extra)


def _take(
    store: StatusStore, email_id: str, worker: str, lease_seconds: float
) -> tuple[str, str | None, int, float, str]:
    """Take EMAIL_ID's lease (from a dead holder too): store.begin_attempt's answer."""
    lease = f"{_HOST}|{os.getpid()}|{uuid.uuid4().hex}"
    found = store.begin_attempt(email_id, worker, lease, lease_seconds)
    if found[0] == "leased" and found[1] is not None and _holder_is_dead(found[1]):
        # Its sender was killed (a pool child, a worker process): take over at once.
        found = store.begin_attempt(email_id, worker, lease, lease_seconds, found[1])
    return found


def _prepare(
    payload: str, settings: Settings
) -> tuple[EmailRequest, Rendered, list[str], list[dict[str, Any]]]:
    """The request, its rendered body, the envelope recipients and those held back by policy."""
    try:
        request = EmailRequest.model_validate_json(payload)
        body = _body(request)
    except (ValidationError, jinja2.TemplateError, ValueError) as exc:
        raise PermanentDeliveryError(
            f"message cannot be built: {type(exc).__name__}", None, "bad_message"
        ) from exc
    recipients, held = envelope(request.recipients(), settings)
    if not recipients:
        raise PermanentDeliveryError("no recipient in EMAIL_ALLOWED_DOMAINS", None, "not_allowed")
    return request, body, recipients, held


async def _send(
    email_id: str,
    request: EmailRequest,
    body: Rendered,
    recipients: list[str],
    timeout: float,
    bulk: bool = False,
    before_data: Callable[[], None] | None = None,
) -> Accepted:
    """Build the MIME message and hand it to the SMTP server (on the sender loop)."""
    try:
        message = await build_message(email_id, request, body)
    except (ValidationError, ValueError) as exc:
        raise PermanentDeliveryError(
            f"message cannot be built: {type(exc).__name__}", None, "bad_message"
        ) from exc
    return await deliver(message, recipients, timeout, bulk, before_data)


def _budget(settings: Settings) -> float:
    # An attempt must end well inside its lease (time limit + 5 s): prefork's
    # hard time limit is a backstop only, and the threads pool has none.
    limit = settings.email_task_time_limit
    return limit - min(10.0, limit / 4)


def _record_failure(store: StatusStore, job: _Attempting, exc: DeliveryError, **extra: Any) -> None:
    details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
    attempt = job.attempt("failed", **details)
    _persist(lambda: store.mark_failed(job.email_id, attempt, job.priority))
    log_event(logger, "email.failed", logging.WARNING, id=job.email_id, status="failed", attempt=job.number,
              smtp_code=exc.code, error_class=exc.error_class, duration_ms=attempt["duration_ms"],
              worker=job.worker, **extra)  # fmt: skip


def _record_lost_in_data(store: StatusStore, email_id: str, number: int, worker: str) -> None:
    # Its sender stopped (killed, or Redis gone right after the 250) once DATA
    # had begun: the server may have the message, so a person decides.
    error = f"outcome unknown: the sender of attempt {number} stopped after DATA began"
    store.mark_failed(email_id, event("failed", error, "outcome_unknown", worker))
    log_event(logger, "email.failed", logging.WARNING, id=email_id, status="failed", attempt=number,
              error_class="outcome_unknown", worker=worker)  # fmt: skip


def _record_internal(store: StatusStore, job: _Attempting, exc: BaseException) -> None:
    # A defect of ours: dead-letter the email with the error type, so it can
    # be requeued once fixed.
    details = {"error": f"internal error: {type(exc).__name__}", "error_class": "internal"}
    store.mark_failed(job.email_id, job.attempt("failed", **details), job.priority)


def _record_retry(
    store: StatusStore, job: _Attempting, exc: TransientDeliveryError, settings: Settings
) -> float:
    """Record a transient failure; return the delay before the next attempt."""
    details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
    delay = retry_delay(job.number, settings.email_retry_backoff, settings.email_retry_backoff_max)
    next_at = iso(datetime.now(UTC) + timedelta(seconds=delay))
    attempt = job.attempt("retry", retry_in=round(delay, 3), **details)
    _persist(lambda: store.mark_retrying(job.email_id, attempt, next_at, job.priority))
    log_event(logger, "email.retrying", id=job.email_id, status="retrying", attempt=job.number,
              smtp_code=exc.code, error_class=exc.error_class, duration_ms=attempt["duration_ms"],
              retry_in=round(delay, 3), worker=job.worker)  # fmt: skip
    return delay


def _record_success(
    store: StatusStore, job: _Attempting, accepted: Accepted, held: list[dict[str, Any]]
) -> None:
    if held:
        accepted = Accepted(accepted.reply, [*accepted.refused, *held])
    attempt = job.attempt("sent", smtp_reply=mask_addresses(accepted.reply[:200]))
    latency = time.time() - job.created if job.created else 0.0
    _record_sent(store, job.email_id, attempt, accepted, job.priority, latency)
    log_event(logger, "email.sent", id=job.email_id, status="sent", attempt=job.number,
              duration_ms=attempt["duration_ms"], refused=len(accepted.refused),
              worker=job.worker)  # fmt: skip


@app.task(bind=True, base=EmailTask, name="neoforge.send_email", max_retries=None)
def send_email(self: EmailTask, email_id: str) -> dict[str, Any]:
    """Deliver the email EMAIL_ID; retry transient failures, dead-letter permanent ones."""
    settings = get_settings()
    store = get_store()
    worker = self.request.hostname or socket.gethostname()
    try:
        status, payload, number, created, priority = _take(
            store, email_id, worker, settings.email_task_time_limit + 5
        )
    except redis.RedisError as exc:
        raise Reject(exc, requeue=True) from exc
    if status == "unknown":
        try:
            _record_lost_in_data(store, email_id, number, worker)
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc
        return {"id": email_id, "status": "failed", "attempt": number}
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
    job = _Attempting(email_id, number, created, priority, worker)
    deadline = job.t0 + _budget(settings)
    try:
        request, body, recipients, held = _prepare(payload, settings)
        mark = functools.partial(store.mark_data_started, email_id, number)
        timeout = max(0.5, deadline - time.monotonic())
        accepted = run_in_worker_loop(_send(email_id, request, body, recipients, timeout, before_data=mark))
    except TransientDeliveryError as exc:
        if number > settings.email_max_retries:
            _record_failure(store, job, exc, reason="retries exhausted")
            raise
        try:
            delay = _record_retry(store, job, exc, settings)
        except redis.RedisError as rexc:
            raise Reject(rexc, requeue=True) from exc
        try:
            raise self.retry(exc=exc, countdown=delay) from exc
        except Reject as rejected:
            # Celery turns a failed re-publish into Reject(requeue=False), which
            # would drop the email: hand the message back instead (if Redis is
            # down too, it stays unacknowledged and comes back after the
            # visibility timeout).
            raise Reject(rejected.reason, requeue=True) from exc
    except PermanentDeliveryError as exc:
        _record_failure(store, job, exc)
        raise
    except redis.RedisError as exc:
        # Redis went away before anything was sent: hand the message back.
        log_event(logger, "email.requeued", logging.WARNING, id=email_id, reason=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        _record_internal(store, job, exc)
        raise  # Celery logs the traceback
    _record_success(store, job, accepted, held)
    return {"id": email_id, "status": "sent", "attempt": number}


class BatchTask(Task):  # type: ignore[misc]
    """``send_batch``'s base: a pool kill past the time limit dead-letters what was mid-send."""

    throws = (PermanentDeliveryError, TransientDeliveryError)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            # As for send_email: nobody can tell how far those dialogues got.
            entry = event(
                "failed", f"task time limit exceeded ({exc})", "time_limit", self.request.hostname or ""
            )
            for email_id in args[0]:
                with contextlib.suppress(redis.RedisError):
                    get_store().fail_if_sending(email_id, entry)


@app.task(bind=True, base=BatchTask, name="neoforge.send_batch")
def send_batch(self: BatchTask, email_ids: list[str]) -> dict[str, int]:
    """Deliver many bulk emails from one message, their SMTP dialogues side by side.

    Each email is handled exactly as ``send_email`` handles one: its own
    lease, status, attempt timeline, retries (published as its own
    ``send_email`` message) and dead letter; its result is stored under its
    own id. The message is acknowledged once every email has an outcome; if
    Redis fails part-way it is handed back, and the ledger skips the emails
    already sent when it comes again.
    """
    settings = get_settings()
    # A few batches at a time per process, enough to fill bulk mail's share
    # of the SMTP connections: the other threads (and the CPU) stay free for
    # transactional mail. A batch that cannot start soon goes back to its queue.
    gate = _batch_gate(settings)
    if not gate.acquire(timeout=settings.broker_visibility_timeout / 4):
        raise Reject("busy: every batch slot of this worker process is taken", requeue=True)
    try:
        return _send_batch(self, email_ids, settings)
    finally:
        gate.release()


_gates: dict[int, threading.BoundedSemaphore] = {}
_gates_lock = threading.Lock()


def _batch_gate(settings: Settings) -> threading.BoundedSemaphore:
    size = max(1, bulk_connections(settings) // settings.email_bulk_batch_size)
    with _gates_lock:
        gate = _gates.get(size)
        if gate is None:
            gate = _gates[size] = threading.BoundedSemaphore(size)
        return gate


def _send_batch(self: BatchTask, email_ids: list[str], settings: Settings) -> dict[str, int]:
    store = get_store()
    worker = self.request.hostname or socket.gethostname()
    queue = (self.request.delivery_info or {}).get("routing_key") or "bulk"
    deadline = time.monotonic() + _budget(settings)
    counts = {"sent": 0, "failed": 0, "retrying": 0, "skipped": 0, "deferred": 0}
    later: list[tuple[str, float, str]] = []  # (id, countdown, queue): published as send_email
    redis_down: redis.RedisError | None = None
    flying: dict[concurrent.futures.Future[Accepted], tuple[_Attempting, list[dict[str, Any]]]] = {}
    for email_id in email_ids:
        if redis_down is not None:
            break
        if deadline - time.monotonic() < _budget(settings) / 2:
            # Too little time left to start more: the rest goes out as single emails.
            later.append((email_id, 0.0, queue))
            counts["deferred"] += 1
            continue
        try:
            status, payload, number, created, priority = _take(
                store, email_id, worker, settings.email_task_time_limit + 5
            )
        except redis.RedisError as exc:
            redis_down = exc
            break
        if status == "unknown":
            try:
                _record_lost_in_data(store, email_id, number, worker)
            except redis.RedisError as exc:
                redis_down = exc
                break
            counts["failed"] += 1
            continue
        if status == "leased":
            later.append((email_id, max(1.0, number / 1000), queue))
            counts["deferred"] += 1
            continue
        if status != "sending" or payload is None:
            counts["skipped"] += 1
            continue
        job = _Attempting(email_id, number, created, priority, worker)
        try:
            request, body, recipients, held = _prepare(payload, settings)
        except PermanentDeliveryError as exc:
            _record_failure(store, job, exc)
            counts["failed"] += 1
            continue
        except Exception as exc:  # a defect of ours: this email only, the batch goes on
            logger.exception("email.internal_error id=%s", email_id)
            _record_internal(store, job, exc)
            counts["failed"] += 1
            continue
        timeout = max(0.5, deadline - time.monotonic())
        mark = functools.partial(store.mark_data_started, email_id, number)
        flying[submit(_send(email_id, request, body, recipients, timeout, True, mark))] = (job, held)
    for future in concurrent.futures.as_completed(flying):
        job, held = flying[future]
        try:
            try:
                accepted = future.result()
            except TransientDeliveryError as exc:
                if job.number > settings.email_max_retries:
                    _record_failure(store, job, exc, reason="retries exhausted")
                    counts["failed"] += 1
                else:
                    later.append((job.email_id, _record_retry(store, job, exc, settings), job.priority))
                    counts["retrying"] += 1
                continue
            except PermanentDeliveryError as exc:
                _record_failure(store, job, exc)
                counts["failed"] += 1
                continue
            except redis.RedisError:
                raise  # the ledger mark before DATA failed: nothing was sent (handled below)
            except Exception as exc:
                logger.exception("email.internal_error id=%s", job.email_id)
                _record_internal(store, job, exc)
                counts["failed"] += 1
                continue
            _record_success(store, job, accepted, held)
            counts["sent"] += 1
            with contextlib.suppress(redis.RedisError):
                self.app.backend.mark_as_done(
                    job.email_id, {"id": job.email_id, "status": "sent", "attempt": job.number}
                )
        except redis.RedisError as exc:
            redis_down = exc
    for email_id, countdown, queue in later:
        try:
            send_email.apply_async((email_id,), countdown=countdown, queue=queue)
        except QueueUnavailable as exc:
            redis_down = redis.ConnectionError(str(exc))
    if redis_down is not None:
        # Hand the whole message back: what was sent is skipped next time.
        log_event(logger, "batch.requeued", logging.WARNING, emails=len(email_ids),
                  reason=type(redis_down).__name__)  # fmt: skip
        raise Reject(redis_down, requeue=True)
    return counts
