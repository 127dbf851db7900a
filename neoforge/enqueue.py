"""How an email is queued: validated, then recorded, before its message is published through Celery.

The Celery glue (tasks/email.py) publishes the message; everything else lives
here: the checks, the record and its payload, and adopting an email that a
client published straight to the broker by task name (``send_task``,
``celery call``, Flower), whose message carries the fields themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import jinja2
import redis
from pydantic import ValidationError

from neoforge.errors import FieldError, InvalidEmail, PermanentDeliveryError, plain_message
from neoforge.logs import log_event
from neoforge.message import EmailRequest
from neoforge.mime import build
from neoforge.redact import mask_addresses
from neoforge.settings import Settings, get_settings
from neoforge.store import StatusStore, event, iso
from neoforge.store.admission import Charge, Publish
from neoforge.store.batches import create_batch
from neoforge.store.keys import METRICS
from neoforge.templates import Rendered, missing_variables, render

__all__ = [
    "adopt",
    "check_renders",
    "discard_quietly",
    "due_time",
    "field_errors",
    "invalid_error",
    "record",
    "record_bulk",
    "record_chunk",
    "record_expired",
    "validate",
]

logger = logging.getLogger(__name__)


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as ours, their messages without pydantic's "Value error, " prefix."""
    return [FieldError(tuple(e["loc"]), plain_message(e["msg"]), e["type"]) for e in exc.errors()]


def validate(fields: dict[str, Any]) -> EmailRequest:
    """Validate FIELDS and check the template renders; raise InvalidEmail naming the fields."""
    try:
        request = EmailRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEmail(field_errors(exc)) from exc
    check_renders(request)
    return request


def check_renders(request: EmailRequest) -> None:
    """Render the template once now, so a missing variable is the caller's error, not a dead letter.

    Also refuses an email whose encoded size would pass EMAIL_MAX_MESSAGE_BYTES.
    """
    if request.template is None:
        check_size(request, Rendered(html=request.html, text=request.text))
        return
    try:
        body = render(request.template, request.context)
    except jinja2.UndefinedError as exc:
        missing = missing_variables(request.template, request.context)
        names = ", ".join(map(repr, missing))
        why = f"needs variables missing from the context: {names}" if missing else str(exc.message)
        error = FieldError(("context",), f"template {request.template!r} {why}", "missing")
        raise InvalidEmail([error]) from exc
    except jinja2.TemplateError as exc:
        raise InvalidEmail(
            [FieldError(("template",), f"template {request.template!r} cannot be rendered: {exc}")]
        ) from exc
    limit = get_settings().email_max_body_bytes
    for part in (body.html, body.text):
        if part is not None and len(part.encode()) > limit:
            raise InvalidEmail(
                [FieldError(("context",), f"rendered body is larger than {limit} bytes", "too_large")]
            )
    check_size(request, body)


def check_size(request: EmailRequest, body: Rendered) -> None:
    """Refuse REQUEST if its MIME message would be larger than EMAIL_MAX_MESSAGE_BYTES, as encoded.

    A cheap upper bound first (base64 and quoted-printable grow content by at
    most a third, plus headers); the message is built only when that bound is
    near the limit.
    """
    settings = get_settings()
    limit = settings.email_max_message_bytes
    texts = sum(len(part.encode()) for part in (body.html, body.text) if part is not None)
    files = sum(len(item.content) for item in request.attachments)
    bound = 3 * texts + files * 78 // 76 + 4096 * (1 + len(request.attachments))
    if bound <= limit:
        return
    size = len(build("size-check", request, body, settings).as_bytes())
    if size > limit:
        where = "attachments" if request.attachments else "text"
        raise InvalidEmail(
            [
                FieldError(
                    (where,), f"the email would be {size} bytes as sent, over {limit} bytes", "too_large"
                )
            ]
        )


def _fields(request: EmailRequest, queue: str, due: float | None) -> dict[str, str | int]:
    """The status record's fields for a new email."""
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
    if due is not None:
        fields["send_at"] = fields["next_attempt_at"] = iso_ts(due)
    return fields


def payload_json(request: EmailRequest) -> str:
    """REQUEST as stored with its record: fields left at their defaults are left out (they come back
    as defaults when the worker validates it), about 120 bytes less per email."""
    return request.model_dump_json(exclude_defaults=True)


def iso_ts(epoch: float) -> str:
    """EPOCH seconds as an ISO 8601 UTC time."""
    return iso(datetime.fromtimestamp(epoch, UTC))


def due_time(
    request: EmailRequest, delay: float | None = None, clock: Callable[[], float] = time.time
) -> float | None:
    """When REQUEST is due, if later than now: its ``send_at``, or DELAY seconds from now.

    CLOCK says what now is: the store's (Redis's time, which the scheduler reads), asked only
    when there is a ``send_at`` or a DELAY.
    """
    if request.send_at is None and not (delay is not None and delay > 0):
        return None
    now = clock()
    if request.send_at is not None and request.send_at.timestamp() > now:
        return request.send_at.timestamp()
    if delay is not None and delay > 0:
        return now + delay
    return None


def record(
    store: StatusStore,
    request: EmailRequest,
    email_id: str,
    queue: str,
    settings: Settings,
    *,
    due: float | None = None,
    carried: str = "",
    publish: Publish | None = None,
    charge: Charge | None = None,
) -> tuple[str, str | None]:
    """Record REQUEST under EMAIL_ID: (id, "queued" or "scheduled"), or (earlier id, None).

    An EMAIL_ID already recorded, or an ``idempotency_key`` seen within its
    window, records nothing and gives the earlier email's id. DUE (epoch
    seconds) holds the email in Redis until then. CARRIED is what Celery must
    get back when a held email is published (callbacks, chain), as JSON.
    PUBLISH and CHARGE go in the same round trip (``StatusStore.create``).
    Raises redis.RedisError if Redis cannot be reached, RateLimited past CHARGE.
    """
    fields = _fields(request, queue, due)
    if carried:
        fields["celery"] = carried
    idempotency = (
        (request.idempotency_key, settings.email_idempotency_window) if request.idempotency_key else None
    )
    recorded, created = store.create(email_id, payload_json(request), fields, idempotency=idempotency,
                                     due=due, recipients=request.recipients(), publish=publish,
                                     charge=charge)  # fmt: skip
    if not created:
        log_event(logger, "email.duplicate", id=recorded)
        return recorded, None
    replicate(store.client, settings, 1)
    status = "queued" if due is None else "scheduled"
    log_event(logger, "email.queued", id=email_id, status=status, template=request.template, queue=queue,
              scheduled=due is not None)  # fmt: skip
    return email_id, status


def record_bulk(
    store: StatusStore, requests: Sequence[EmailRequest], ids: Sequence[str], batch_id: str
) -> list[tuple[str, str]]:
    """Record many checked emails, 500 to a Redis pipeline; return the (id, queue) pairs due now.

    If Redis fails part-way, the emails already recorded are in the pending
    index, so the recovery sweep still publishes them.
    """
    due_now: list[tuple[str, str]] = []
    for start in range(0, len(ids), 500):
        chunk = list(zip(ids[start : start + 500], requests[start : start + 500], strict=True))
        with store.client.pipeline(transaction=False) as pipe:
            for email_id, request in chunk:
                time.sleep(0)  # the GIL to a waiting thread (the API's event loop): see bulk.yield_gil
                due = due_time(request, clock=store.clock)
                fields = _fields(request, request.priority, due)
                fields["batch"] = batch_id
                store.create(email_id, payload_json(request), fields, due=due,
                             recipients=request.recipients(), pipeline=pipe)  # fmt: skip
                if due is None:
                    due_now.append((email_id, request.priority))
            pipe.execute()
            replicate(store.client, get_settings(), len(chunk))
    create_batch(store.client, batch_id, list(ids), requests[0].template or "", store.status_ttl + 31 * 86400)
    return due_now


def record_chunk(
    store: StatusStore, emails: Sequence[tuple[EmailRequest, str, str, Publish | None]], settings: Settings
) -> list[tuple[str, str | None]]:
    """Record (request, id, queue, message) EMAILS due now in one MULTI/EXEC transaction.

    Returns, per email, what ``record`` returns. A message given is pushed with
    its record; the caller publishes the others. Raises redis.RedisError
    (a lost connection never sends EXEC: nothing of the chunk is written).
    """
    with store.client.pipeline(transaction=True) as pipe:
        for request, email_id, queue, publish in emails:
            idempotency = (
                (request.idempotency_key, settings.email_idempotency_window)
                if request.idempotency_key
                else None
            )
            store.create(email_id, payload_json(request), _fields(request, queue, None),
                         idempotency=idempotency, recipients=request.recipients(), pipeline=pipe,
                         publish=publish)  # fmt: skip
        replies = pipe.execute()
    replicate(store.client, settings, len(emails))
    results: list[tuple[str, str | None]] = []
    for (request, email_id, queue, _), (recorded, created) in zip(emails, replies, strict=True):
        if int(created) == 1:
            log_event(logger, "email.queued", id=email_id, status="queued", template=request.template,
                      queue=queue, scheduled=False)  # fmt: skip
            results.append((email_id, "queued"))
        else:
            log_event(logger, "email.duplicate", id=str(recorded))
            results.append((str(recorded), None))
    return results


def replicate(client: redis.Redis, settings: Settings, emails: int) -> None:
    """Wait (REDIS_WAIT_TIMEOUT at most) until REDIS_WAIT_REPLICAS replicas have this client's writes.

    Only the record needs it: a broker message lost in a failover is published again from the
    record by the recovery sweep. A timeout is counted and logged, and the email stays accepted;
    for the next ten timeouts' time this process does not wait at all (no replica answering,
    e.g. right after a failover, must not add the timeout to every enqueue).
    """
    if settings.redis_wait_replicas and time.monotonic() >= _degraded_until[0]:
        acked = client.wait(settings.redis_wait_replicas, int(settings.redis_wait_timeout * 1000))
        _counted(client, settings, acked, emails)
    elif settings.redis_wait_replicas:
        client.hincrby(METRICS, "unreplicated", emails)


_degraded_until = [0.0]


def _counted(client: redis.Redis, settings: Settings, acked: int, emails: int) -> None:
    if acked < settings.redis_wait_replicas:
        _degraded_until[0] = time.monotonic() + 10 * settings.redis_wait_timeout
        client.hincrby(METRICS, "unreplicated", emails)
        log_event(logger, "email.unreplicated", logging.WARNING, emails=emails, replicas=acked,
                  wanted=settings.redis_wait_replicas)  # fmt: skip


def invalid_error(exc: InvalidEmail) -> PermanentDeliveryError:
    """The dead-letter error for fields that are not a valid email: names the fields, never values."""
    detail = "; ".join(f"{'.'.join(map(str, e.loc)) or 'email'}: {mask_addresses(e.msg)}" for e in exc.errors)
    return PermanentDeliveryError(f"invalid email: {detail}"[:1000], None, "invalid")


def adopt(
    store: StatusStore, email_id: str, fields: dict[str, Any], queue: str, settings: Settings, worker: str
) -> PermanentDeliveryError | tuple[str, str | None]:
    """Record an email a client published with its fields, under the message's id (once).

    Returns what ``record`` returns, or, for fields that are not a valid
    email, the error it was dead-lettered with (nothing is kept but the
    error: no content, so no requeue). A redelivered message finds its record
    and records nothing again.
    """
    try:
        request = validate(fields)
    except InvalidEmail as exc:
        error = invalid_error(exc)
        entry = event("failed", str(error), "invalid", worker)
        priority = fields.get("priority")
        recorded: dict[str, str | int] = {
            "queue": queue,
            "priority": priority if priority in ("transactional", "bulk") else "transactional",
        }
        if store.finish_new(email_id, "failed", recorded, entry):
            log_event(logger, "email.failed", logging.WARNING, id=email_id, status="failed",
                      error_class="invalid", worker=worker)  # fmt: skip
        return error
    return record(store, request, email_id, queue, settings, due=due_time(request, clock=store.clock))


def record_expired(store: StatusStore, email_id: str, queue: str, worker: str) -> bool:
    """Record an email whose message Celery expired before any worker ran it (if it has no record)."""
    entry = event("expired", worker=worker)
    return store.finish_new(email_id, "expired", {"queue": queue, "priority": "transactional"}, entry)


def discard_quietly(store: StatusStore, email_id: str) -> None:
    """Remove a record whose message could not be published (logged if even that fails)."""
    try:
        store.discard(email_id)
    except redis.RedisError:
        log_event(logger, "email.discard_failed", logging.WARNING, id=email_id)
