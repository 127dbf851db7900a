"""Operations routes: health, readiness (Redis and the SMTP server) and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from neoforge.capacity import read
from neoforge.metrics import render as render_metrics
from neoforge.runtime import current
from neoforge.schemas import Health
from neoforge.settings import get_settings
from neoforge.smtp.probe import check_smtp

__all__ = ["Readiness", "health", "metrics", "ready"]


class Readiness(Health):
    """Readiness of the API: its Redis, and the SMTP server as configured ("ok" or the one-line reason)."""

    smtp: str


def metrics() -> Response:
    """Prometheus metrics: totals, latency histograms and true queue depth (no personal data)."""
    body = render_metrics(current().redis)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _redis_state() -> str:
    """ "ok" when Redis answers and takes new mail; "full" when queueing is refused (maxmemory less
    REDIS_MEMORY_HEADROOM reached, or persistence failing); else the name of the error."""
    rt = current()
    try:
        state = read(rt.redis)
    except redis.RedisError as exc:
        return type(exc).__name__
    return "full" if state.queueing_refused(rt.settings.redis_memory_headroom) else "ok"


def health() -> JSONResponse:
    """200 when Redis answers and takes writes; 503 when it does not, or is full (``"redis": "full"``)."""
    redis_state = _redis_state()
    if redis_state != "ok":
        body = Health(status="unavailable", redis=redis_state)
        return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse(Health(status="ok", redis="ok").model_dump())


async def ready() -> JSONResponse:
    """200 when Redis answers and the SMTP server takes our login; 503 with the one-line reason if not.

    Each call opens one SMTP session (bounded by min(SMTP_TIMEOUT, 10 s)).
    """
    redis_state = await run_in_threadpool(_redis_state)
    check = await check_smtp(get_settings())
    smtp_state = "ok" if check.ok else check.line
    body = Readiness(
        status="ok" if redis_state == "ok" and check.ok else "unavailable", redis=redis_state, smtp=smtp_state
    )
    code = status.HTTP_200_OK if body.status == "ok" else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(), status_code=code)
