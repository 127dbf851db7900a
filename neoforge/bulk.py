"""Bulk sending: one template to many recipients, each an email of its own; publishes through ``tasks``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from pydantic import ValidationError

from neoforge.enqueue import field_errors, record_bulk, validate
from neoforge.errors import FieldError, InvalidEmail
from neoforge.logs import log_event
from neoforge.message import BulkRequest, EmailRequest
from neoforge.redis_client import unavailable
from neoforge.runtime import current
from tasks.batch import publish_batches

__all__ = ["queue_bulk", "yield_gil"]

logger = logging.getLogger(__name__)


def yield_gil() -> None:
    """Hand the GIL to a thread waiting for it (the API's event loop) now, between two recipients.

    Checking and recording 10,000 recipients is seconds of Python in one thread;
    without this, the event loop's thread gets the GIL back only at Python's
    switch interval (5 ms), for each of the many steps of every request it serves.
    """
    time.sleep(0)


def _requests(bulk: BulkRequest) -> list[EmailRequest]:
    """Every recipient's email, all checked before any is queued (errors name the recipient)."""
    requests, errors = [], []
    for index, fields in enumerate(bulk.emails()):
        yield_gil()
        try:
            requests.append(validate(fields))
        except InvalidEmail as exc:
            errors += [FieldError(("recipients", index, *e.loc), e.msg, e.type) for e in exc.errors]
            if len(errors) >= 50:
                break
    if errors:
        raise InvalidEmail(errors)
    return requests


def queue_bulk(fields: BulkRequest | dict[str, Any]) -> tuple[str, list[str]]:
    """Validate and queue a bulk send; return (batch id, one email id per recipient, in order)."""
    try:
        bulk = fields if isinstance(fields, BulkRequest) else BulkRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEmail(field_errors(exc)) from exc
    requests = _requests(bulk)
    batch_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in requests]
    rt = current()
    rt.capacity.check_queueing()
    try:
        # Recorded 500 to a pipeline, published as send_batch messages of
        # EMAIL_BULK_BATCH_SIZE ids: not one round trip, nor one message, per
        # email. If Redis fails part-way, the emails already recorded are in
        # the pending index: the recovery sweep publishes them.
        publish_batches(record_bulk(rt.store, requests, ids, batch_id), rt.settings.email_bulk_batch_size)
    except redis.RedisError as exc:
        raise unavailable(exc) from exc
    log_event(logger, "batch.queued", batch=batch_id, emails=len(ids))
    return batch_id, ids
