"""ASGI middleware: a body size limit, and a start-up check that fails in one line."""

from __future__ import annotations

import redis
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neoforge.errors import ConfigurationError
from neoforge.redis_client import unreachable_line
from neoforge.runtime import current
from neoforge.settings import get_settings

__all__ = ["BodyLimit", "StartupCheck"]


def _startup_problem() -> str | None:
    """Why the API cannot start (bad setting, Redis unreachable), in one line; None if it can."""
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        return f"neoforge: {exc}"
    try:
        current().redis.ping()
    except redis.RedisError as exc:
        return unreachable_line(settings, exc)
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
