"""The HTTP API: queue an email, read its status, check health.

``routes`` (emails and batches), ``auth`` (keys, per-key limits), ``ops``
(health, metrics), ``middleware`` (body limit, start-up check); the app is
put together here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from neoforge.api.docs import add_docs
from neoforge.api.middleware import BodyLimit, StartupCheck
from neoforge.api.ops import Readiness, health, metrics, ready
from neoforge.api.policy import suppressions, unsubscribe, webhooks
from neoforge.api.routes import batches, emails, sending
from neoforge.console import console
from neoforge.embedded import EmbeddedWorker
from neoforge.errors import InvalidEmail, QueueFull, QueueUnavailable, plain_message
from neoforge.logs import configure_logging, log_event
from neoforge.ratelimit import RateLimited
from neoforge.redis_client import storage_full, where
from neoforge.schemas import Health
from neoforge.settings import get_settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, InvalidEmail):
        raise exc
    detail = [{"loc": ["body", *e.loc], "msg": e.msg, "type": e.type} for e in exc.errors]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _request_invalid(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own answer (422, pydantic's errors), with messages as a person reads them.
    if not isinstance(exc, RequestValidationError):
        raise exc
    detail = [{**e, "msg": plain_message(str(e.get("msg", "")))} for e in exc.errors()]
    code = status.HTTP_422_UNPROCESSABLE_CONTENT
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=code)


async def _rate_limited(_: Request, exc: Exception) -> JSONResponse:
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else 60
    return JSONResponse(
        {"detail": str(exc)},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(retry_after)},
    )


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The details (which Redis, which error) go to the log, not to API clients.
    if isinstance(exc, QueueFull) or storage_full(exc):
        log_event(logger, "api.redis_full", logging.WARNING, reason=type(exc).__name__)
        detail = "the queue's storage is full: nothing was queued; try again later"
    elif isinstance(exc, redis.ResponseError):
        raise exc  # any other refusal is a defect: a 500
    else:
        log_event(logger, "api.redis_unavailable", logging.WARNING, reason=type(exc).__name__)
        detail = "cannot reach Redis: try again later"
    return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Log start-up (StartupCheck has checked settings and Redis); close connections at shutdown."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.api_keys:
        logger.warning("API_KEYS is not set: /emails answers 503 until it is")
    log_event(logger, "api.started", redis=where(settings))
    embedded = EmbeddedWorker() if settings.embedded_worker else None
    if embedded is not None:
        embedded.start()
    yield
    if embedded is not None:
        # The embedded worker's sender loop and SMTP pool end with it.
        embedded.stop()
    # Otherwise this process's Redis and broker connections are idle sockets,
    # closed with the process: a worker sharing the process keeps using them.


def create_app() -> FastAPI:
    """The FastAPI application (settings are read at start-up, not here)."""
    app = FastAPI(
        title="NeoForge Mail",
        version="0.1.0",
        summary="Queue emails for background delivery; read their status.",
        lifespan=lifespan,
        # Served by add_docs from local files: the default pages load their scripts from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    app.include_router(sending)
    app.include_router(emails)
    app.include_router(batches)
    app.include_router(console)  # the operator console at /console (its own sign-in)
    app.include_router(suppressions)
    app.include_router(webhooks)
    app.include_router(unsubscribe)
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        response_model=Health,
        tags=["ops"],
        responses={503: {"model": Health, "description": "Redis unreachable."}},
    )
    app.add_api_route(
        "/health/ready",
        ready,
        methods=["GET"],
        response_model=Readiness,
        tags=["ops"],
        responses={503: {"model": Readiness, "description": "Redis or the SMTP server unusable."}},
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
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(QueueUnavailable, _unavailable)
    # Redis out of reach in any route is a 503; other Redis errors are defects (500).
    app.add_exception_handler(redis.ConnectionError, _unavailable)
    app.add_exception_handler(redis.TimeoutError, _unavailable)
    # Redis full (maxmemory) or its disk failing: a 503 that says so, never a 500.
    app.add_exception_handler(redis.ResponseError, _unavailable)
    app.add_exception_handler(RateLimited, _rate_limited)
    return app
