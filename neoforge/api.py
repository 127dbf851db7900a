"""The HTTP API: queue an email, read its status, check health."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neoforge.bulk import queue_bulk
from neoforge.deadletters import list_failed, requeue, requeue_all
from neoforge.embedded import EmbeddedWorker
from neoforge.errors import ConfigurationError, EmailNotFound, InvalidEmail, QueueUnavailable
from neoforge.logs import configure_logging, log_event
from neoforge.message import BulkRequest, EmailRequest
from neoforge.metrics import render as render_metrics
from neoforge.ratelimit import RateLimited, charge
from neoforge.redis_client import safe_url
from neoforge.runtime import close as close_runtime
from neoforge.runtime import current
from neoforge.schemas import (
    BatchQueued,
    BatchSummary,
    EmailPage,
    EmailStatus,
    Health,
    Problem,
    Purged,
    PurgeRequest,
    Queued,
    Requeued,
    RequeueFilter,
)
from neoforge.settings import get_settings
from neoforge.store.batches import batch_summary as read_batch
from tasks import send_email

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="One of the keys in API_KEYS.")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No email was ever queued under this id."}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON (or not UTF-8)."},
    401: {"model": Problem, "description": "Missing or wrong API key."},
    413: {"model": Problem, "description": "Request body larger than API_MAX_REQUEST_BYTES."},
    429: {
        "model": Problem,
        "description": "The key's requests or recipients per minute are used up; see Retry-After.",
    },
    503: {"model": Problem, "description": "Redis unreachable, or API_KEYS not set."},
}


async def require_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Accept only ``Authorization: Bearer <key>`` with a key from API_KEYS."""
    keys = get_settings().api_keys
    if not keys:
        # No keys configured must never mean "open to everyone".
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "API_KEYS is not set: /emails is disabled")
    given = credentials.credentials.encode() if credentials else b""
    matched = False
    for key in keys:  # compare with every key, in constant time each
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return given.decode()


def _charge(key: str, requests: int, recipients: int) -> None:
    settings = get_settings()
    limits = {
        "max_requests": settings.api_rate_limit_requests,
        "max_recipients": settings.api_rate_limit_recipients,
    }
    charge(current().store, key, requests=requests, recipients=recipients, **limits)


def limit_requests(key: Annotated[str, Depends(require_key)]) -> str:
    """Charge one request to the key's per-minute allowance (429 past it)."""
    _charge(key, requests=1, recipients=0)
    return key


emails = APIRouter(
    prefix="/emails", tags=["emails"], dependencies=[Depends(limit_requests)], responses=_ERRORS
)
# Queueing charges the request and its recipients together, in the handler:
# one Redis round trip per request on the hot path.
sending = APIRouter(prefix="/emails", tags=["emails"], responses=_ERRORS)
Authenticated = Annotated[str, Depends(require_key)]


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
    _charge(key, requests=1, recipients=len(request.recipients()))
    result, queued_as = send_email.queue_request(request)
    email_id = str(result.id)
    if queued_as is None:  # an idempotency key seen before: that email's id and status
        record = current().store.get(email_id)
        queued_as = record["status"] if record else "queued"
    return Queued(id=email_id, status=queued_as)


@sending.post(
    "/bulk",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchQueued,
    summary="Queue one template to many recipients",
    responses={422: {"description": "Invalid input: the detail names each bad recipient and field."}},
)
async def queue_bulk_emails(body: BulkRequest, key: Authenticated) -> BatchQueued:
    """Up to 10,000 recipients, each with its own context; each becomes an email with its own status."""
    return await run_in_threadpool(_queue_many, key, body)


def _queue_many(key: str, body: BulkRequest) -> BatchQueued:
    _charge(key, requests=1, recipients=len(body.recipients))
    batch_id, ids = queue_bulk(body)
    return BatchQueued(batch_id=batch_id, ids=ids)


@emails.get(
    "/{email_id}",
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


@emails.post("/purge", response_model=Purged, summary="Erase every email to an address")
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


batches = APIRouter(
    prefix="/batches", tags=["emails"], dependencies=[Depends(limit_requests)], responses=_ERRORS
)


@batches.get("/{batch_id}", response_model=BatchSummary, summary="Progress of a bulk send",
             responses={404: {"model": Problem, "description": "No such batch."}})  # fmt: skip
def batch_summary(batch_id: str) -> BatchSummary:
    """How many of the batch's emails are queued, sent, failed, ..."""
    summary = read_batch(current().redis, batch_id)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no batch with this id")
    return BatchSummary.model_validate(summary)


def metrics() -> Response:
    """Prometheus metrics: totals, latency histograms and true queue depth (no personal data)."""
    body = render_metrics(current().redis)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _status(record: dict[str, Any]) -> EmailStatus:
    return EmailStatus.model_validate({k: v for k, v in record.items() if v != ""})


def health() -> JSONResponse:
    """200 when Redis answers, 503 when it does not."""
    try:
        current().redis.ping()
    except redis.RedisError as exc:
        body = Health(status="unavailable", redis=type(exc).__name__)
        return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse(Health(status="ok", redis="ok").model_dump())


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, InvalidEmail):
        raise exc
    detail = [{"loc": ["body", *e.loc], "msg": e.msg, "type": e.type} for e in exc.errors]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _rate_limited(_: Request, exc: Exception) -> JSONResponse:
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else 60
    return JSONResponse(
        {"detail": str(exc)},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(retry_after)},
    )


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The details (which Redis, which error) go to the log, not to API clients.
    log_event(logger, "api.redis_unavailable", logging.WARNING, reason=type(exc).__name__)
    return JSONResponse(
        {"detail": "cannot reach Redis: try again later"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
    )


def _startup_problem() -> str | None:
    """Why the API cannot start (bad setting, Redis unreachable), in one line; None if it can."""
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        return f"neoforge: {exc}"
    try:
        current().redis.ping()
    except redis.RedisError as exc:
        return f"neoforge: cannot reach Redis at {safe_url(settings.redis_url)}: {type(exc).__name__}"
    return None


class BodyLimit:
    """ASGI middleware: refuse a request body over API_MAX_REQUEST_BYTES before it is read whole (413)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().api_max_request_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        refusal = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await refusal(scope, receive, send)
            return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Stop reading: the app sees the client go, we answer 413.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def answering_send(message: Message) -> None:
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await send({"type": "http.response.start", "status": 413, "headers": refusal.raw_headers})
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await send({"type": "http.response.body", "body": refusal.body})

        await self.app(scope, counting_receive, answering_send)


class StartupCheck:
    """ASGI middleware: refuse to start, with one line and no traceback, when settings or Redis are bad."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            problem = await run_in_threadpool(_startup_problem)
            if problem is not None:
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": problem})
                return
        await self.app(scope, receive, send)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Log start-up (StartupCheck has checked settings and Redis); close connections at shutdown."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.api_keys:
        logger.warning("API_KEYS is not set: /emails answers 503 until it is")
    log_event(logger, "api.started", redis=safe_url(settings.redis_url))
    embedded = EmbeddedWorker() if settings.embedded_worker else None
    if embedded is not None:
        embedded.start()
    yield
    if embedded is not None:
        embedded.stop()
    # Celery's broker connections are idle sockets closed with the process;
    # our own clients (and an embedded worker's SMTP pool) close here.
    close_runtime()


def create_app() -> FastAPI:
    """The FastAPI application (settings are read at start-up, not here)."""
    app = FastAPI(
        title="NeoForge Mail",
        version="0.1.0",
        summary="Queue emails for background delivery; read their status.",
        lifespan=lifespan,
    )
    app.include_router(sending)
    app.include_router(emails)
    app.include_router(batches)
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        response_model=Health,
        tags=["ops"],
        responses={503: {"model": Health, "description": "Redis unreachable."}},
    )
    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    )
    app.add_middleware(BodyLimit)
    app.add_middleware(StartupCheck)
    app.add_exception_handler(InvalidEmail, _invalid)
    app.add_exception_handler(QueueUnavailable, _unavailable)
    # Redis out of reach in any route is a 503; other Redis errors are defects (500).
    app.add_exception_handler(redis.ConnectionError, _unavailable)
    app.add_exception_handler(redis.TimeoutError, _unavailable)
    app.add_exception_handler(RateLimited, _rate_limited)
    return app
