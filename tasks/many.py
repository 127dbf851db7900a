"""``send_email.send_many``: thousands of different emails from app code in a few round trips.

Every email is validated first (an invalid one refuses the whole call, naming
its index, before anything is queued). Then each chunk is one Redis
transaction (MULTI/EXEC): every record with its broker message (laid out by
tasks/wire.py as Celery publishes it); a connection lost before EXEC queues
none of the chunk. Each email has its own id and status, as if sent with
``send_email.delay``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError

from neoforge.enqueue import check_renders, field_errors, record_chunk
from neoforge.errors import FieldError, InvalidEmail, QueueUnavailable
from neoforge.message import EmailRequest
from neoforge.redis_client import unavailable
from neoforge.runtime import current
from neoforge.settings import get_settings
from tasks.wire import message_for

if TYPE_CHECKING:
    from tasks.email import EmailTask

__all__ = ["CHUNK", "PartlyQueued", "send_many"]

CHUNK = 500  # emails per Redis transaction


class PartlyQueued(QueueUnavailable):
    """Raised when Redis failed after some chunks were queued: ``queued`` holds their emails' ids."""

    def __init__(self, message: str, queued: list[str]) -> None:
        self.queued = queued
        super().__init__(message)


def _checked(emails: Iterable[Mapping[str, Any]]) -> list[EmailRequest]:
    requests: list[EmailRequest] = []
    errors: list[FieldError] = []
    for index, fields in enumerate(emails):
        try:
            request = EmailRequest.model_validate(dict(fields))
            check_renders(request)
            requests.append(request)
        except ValidationError as exc:
            errors.extend(FieldError((index, *e.loc), e.msg, e.type) for e in field_errors(exc))
        except InvalidEmail as exc:
            errors.extend(FieldError((index, *e.loc), e.msg, e.type) for e in exc.errors)
    if errors:
        raise InvalidEmail(errors)
    return requests


def send_many(task: EmailTask, emails: Iterable[Mapping[str, Any]], *, queue: str | None = None,
              chunk: int = CHUNK) -> list[str]:  # fmt: skip
    """Queue EMAILS (each ``send_email``'s keyword arguments); return their ids, in order.

    InvalidEmail (each error's ``loc`` starts with the email's index) before
    anything is queued; QueueUnavailable if Redis fails before the first chunk
    is in, PartlyQueued (with the ids queued) if after. An idempotency key seen
    before gives the earlier email's id.
    """
    requests = _checked(emails)
    settings = get_settings()
    rt = current()
    rt.capacity.check_queueing()
    ids: list[str] = []
    for start in range(0, len(requests), chunk):
        batch = []
        for request in requests[start : start + chunk]:
            email_id, where = str(uuid.uuid4()), queue or request.priority
            due = request.send_at is not None and request.send_at.timestamp() > time.time()
            batch.append(
                (request, email_id, where, None if due else message_for(task, email_id, where, None, {}))
            )
        try:
            results = _record(task, rt.store, batch, settings)
        except QueueUnavailable as exc:
            if ids:
                raise PartlyQueued(f"{exc}; the first {len(ids)} emails were queued", ids) from exc
            raise
        ids.extend(email_id for email_id, _ in results)
    return ids


def _record(task: EmailTask, store: Any, batch: list[Any], settings: Any) -> list[tuple[str, str | None]]:
    # Emails due later, or whose message Celery must publish itself (a publish
    # signal connected, ...), are queued one by one after the chunk's transaction.
    later = [(request, email_id, where) for request, email_id, where, publish in batch if publish is None]
    now = [item for item in batch if item[3] is not None]
    try:
        results = dict(zip((item[1] for item in now), record_chunk(store, now, settings), strict=True))
    except redis.RedisError as exc:
        raise unavailable(exc) from exc
    for request, email_id, where in later:  # scheduled, or a message Celery must publish
        results[email_id] = task.enqueue(request, checked=True, task_id=email_id, queue=where)
    return [results[item[1]] for item in batch]
