"""Bulk sending: one template to many recipients, each an email of its own."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from neoforge.enqueue import validate
from neoforge.errors import FieldError, InvalidEmail
from neoforge.message import BulkRequest, EmailRequest

__all__ = ["queue_bulk"]


def _requests(bulk: BulkRequest) -> list[EmailRequest]:
    """Every recipient's email, all checked before any is queued (errors name the recipient)."""
    requests, errors = [], []
    for index, fields in enumerate(bulk.emails()):
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
    from tasks import send_email

    try:
        bulk = fields if isinstance(fields, BulkRequest) else BulkRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEmail([FieldError(tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]) from exc
    batch_id = str(uuid.uuid4())
    return batch_id, send_email.queue_bulk(_requests(bulk), batch_id)
