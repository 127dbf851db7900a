"""Operations routes: health and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from neoforge.metrics import render as render_metrics
from neoforge.runtime import current
from neoforge.schemas import Health

__all__ = ["health", "metrics"]


def metrics() -> Response:
    """Prometheus metrics: totals, latency histograms and true queue depth (no personal data)."""
    body = render_metrics(current().redis)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def health() -> JSONResponse:
    """200 when Redis answers, 503 when it does not."""
    try:
        current().redis.ping()
    except redis.RedisError as exc:
        body = Health(status="unavailable", redis=type(exc).__name__)
        return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return JSONResponse(Health(status="ok", redis="ok").model_dump())
