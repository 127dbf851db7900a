"""The email routes: queue one or many, read a status, list and requeue dead letters, erase."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from neoforge.api.auth import Authenticated, charge_key, key_charge, limit_reads, limit_requests, require_key
from neoforge.bulk import queue_bulk
from neoforge.deadletters import list_failed, requeue, requeue_all
from neoforge.errors import EmailNotFound
from neoforge.logs import log_event
from neoforge.message import BulkRequest, EmailRequest
from neoforge.runtime import current
from neoforge.schemas import (
    BatchQueued,
    BatchSummary,
    EmailPage,
    EmailStatus,
    Problem,
    Purged,
    PurgeRequest,
    Queued,
    Requeued,
    RequeueFilter,
)
from neoforge.store.batches import batch_summary as read_batch
from tasks import send_email

__all__ = ["batches", "emails", "sending"]

logger = logging.getLogger(__name__)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No email was ever queued under this id."}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON (or not UTF-8)."},
    401: {"model": Problem, "description": "Missing or wrong API key."},
    413: {"model": Problem, "description": "Request body larger than API_MAX_REQUEST_BYTES."},
    429: {
        "model": Problem,
        "description": "The key's requests, recipients or reads per minute are used up; see Retry-After.",
    },
    503: {"model": Problem, "description": "Redis unreachable, or API_KEYS not set."},
}


# Every route needs a key; each charges either the key's requests (writes) or
# its reads (status polling, listings: an allowance of their own).
_WRITE = [Depends(limit_requests)]
_READ = [Depends(limit_reads)]

emails = APIRouter(prefix="/emails", tags=["emails"], dependencies=[Depends(require_key)], responses=_ERRORS)
# Queueing charges the request and its recipients together, in the handler:
# one Redis round trip per request on the hot path.
sending = APIRouter(prefix="/emails", tags=["emails"], responses=_ERRORS)


@sending.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Queued,
    summary="Queue an email",
    responses={422: {"description": "Invalid email: the detail names each bad field."}},
)
async def queue_email(request: EmailRequest, key: Authenticated) -> Queued:
    """Validate and queue an email; returns its id at once. Delivery happens in a worker."""
    # Charging, recording and publishing use blocking clients (Celery's is):
    # one trip to the thread pool for all three, so the event loop never waits.
    return await run_in_threadpool(_queue_one, key, request)


def _queue_one(key: str, request: EmailRequest) -> Queued:
    charge = key_charge(key, requests=1, recipients=len(request.recipients()))
    email_id, queued_as = send_email.enqueue(request, charge=charge)
    if queued_as is None:  # an idempotency key seen before: that email's id and status
        record = current().store.get(email_id)
        queued_as = record["status"] if record else "queued"
    return Queued(id=email_id, status=queued_as)


_BULK = {
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": BatchQueued,
    "summary": "Queue one template to many recipients",
    "responses": {422: {"description": "Invalid input: the detail names each bad recipient and field."}},
}


@sending.post("/bulk", include_in_schema=False, **_BULK)  # type: ignore[arg-type]
async def queue_bulk_emails(request: Request, key: Authenticated) -> Response:
    """Up to 10,000 recipients, each with its own context; each becomes an email with its own status."""
    # 10,000 recipients take a second or more to parse, check, render and record:
    # all of it in the thread pool, the answer's JSON included, so the event loop
    # keeps answering other requests meanwhile (FastAPI would parse and validate
    # a declared body model, and serialise the answer, on the loop).
    raw = await request.body()
    return await run_in_threadpool(_queue_many, key, raw)


@sending.post("/bulk", **_BULK)  # type: ignore[arg-type]
async def _bulk_documented(body: BulkRequest, key: Authenticated) -> BatchQueued:  # pragma: no cover
    """Up to 10,000 recipients, each with its own context; each becomes an email with its own status."""
    # Never reached (the route above matches first): it documents the body in the OpenAPI schema.
    raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR)


def _queue_many(key: str, raw: bytes) -> Response:
    body = _bulk_body(raw)
    charge_key(key, requests=1, recipients=len(body.recipients))
    batch_id, ids = queue_bulk(body)
    answer = BatchQueued(batch_id=batch_id, ids=ids).model_dump_json()
    return Response(answer, status.HTTP_202_ACCEPTED, media_type="application/json")


def _bulk_body(raw: bytes) -> BulkRequest:
    """RAW as a BulkRequest, or FastAPI's own answers: 422 for invalid JSON or fields, 400 for no text."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
                 "ctx": {"error": exc.msg}}  # fmt: skip
        raise RequestValidationError([error], body=exc.doc) from exc
    except ValueError as exc:  # not UTF-8 (or -16, -32) text
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "There was an error parsing the body") from exc
    try:
        return BulkRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from exc


@emails.get(
    "/{email_id}",
    dependencies=_READ,
    response_model=EmailStatus,
    summary="Status of an email",
    responses=_NOT_FOUND,
)
def email_status(email_id: str) -> EmailStatus:
    """The email's status, attempts, last error, timestamps and attempt timeline."""
    record = current().store.get(email_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no email with this id")
    return _status(record)


@emails.get(
    "",
    dependencies=_READ,
    response_model=EmailPage,
    summary="List failed (dead-letter) emails",
    responses={422: {"description": "Unsupported status filter."}},
)
def list_emails(
    status_filter: Annotated[Literal["failed"], Query(alias="status", description="Only failed is listed.")],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        float | None, Query(description="Cursor from next_before of the previous page.", allow_inf_nan=False)
    ] = None,
) -> EmailPage:
    """Failed emails, newest first, paged with ``before``."""
    records, cursor = list_failed(limit, before)
    items = [_status(record) for record in records]
    return EmailPage(items=items, next_before=cursor)


@emails.post(
    "/requeue",
    dependencies=_WRITE,
    response_model=Requeued,
    summary="Requeue all failed emails",
)
def requeue_failed(body: RequeueFilter) -> Requeued:
    """Requeue every failed email, optionally only one error class or those failed before a time."""
    before = body.failed_before.timestamp() if body.failed_before else None
    count = requeue_all(body.error_class, before)
    return Requeued(requeued=count)


@emails.post(
    "/{email_id}/requeue",
    dependencies=_WRITE,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Queued,
    summary="Requeue one failed email",
    responses={
        404: {"model": Problem, "description": "No email was ever queued under this id."},
        409: {"model": Problem, "description": "The email is not failed."},
    },
)
def requeue_one(email_id: str) -> Queued:
    """Send a failed email again under the same id; attempts restart, history is kept."""
    try:
        done = requeue(email_id)
    except EmailNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no email with this id") from None
    if not done:
        raise HTTPException(status.HTTP_409_CONFLICT, "only a failed email can be requeued")
    return Queued(id=email_id)


@emails.post("/purge", dependencies=_WRITE, response_model=Purged, summary="Erase every email to an address")
def purge_address(body: PurgeRequest) -> Purged:
    """Delete the stored content of every email to this address (unsent ones are cancelled)."""
    store = current().store
    ids = store.emails_to(body.address)
    purged = sum(1 for email_id in ids if store.purge(email_id) is not None)
    store.forget_recipient(body.address)
    log_event(logger, "emails.purged", count=purged)
    return Purged(purged=purged)


@emails.delete(
    "/{email_id}",
    dependencies=_WRITE,
    response_model=EmailStatus,
    summary="Delete an email's stored content",
    responses=_NOT_FOUND,
)
def purge_email(email_id: str) -> EmailStatus:
    """Delete the email's content and refused addresses; an unsent email is cancelled. The status stays."""
    store = current().store
    status_now = store.purge(email_id)
    record = store.get(email_id) if status_now else None
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no email with this id")
    log_event(logger, "email.purged", id=email_id, status=status_now)
    return _status(record)


batches = APIRouter(prefix="/batches", tags=["emails"], dependencies=_READ, responses=_ERRORS)


@batches.get("/{batch_id}", response_model=BatchSummary, summary="Progress of a bulk send",
             responses={404: {"model": Problem, "description": "No such batch."}})  # fmt: skip
def batch_summary(batch_id: str) -> BatchSummary:
    """How many of the batch's emails are queued, sent, failed, ..."""
    summary = read_batch(current().redis, batch_id)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no batch with this id")
    return BatchSummary.model_validate(summary)


def _status(record: dict[str, Any]) -> EmailStatus:
    return EmailStatus.model_validate({k: v for k, v in record.items() if v != ""})
