"""How console pages are answered: Jinja2 templates, security headers, the console's own assets."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from neoforge.console.session import Session, read_session, write_cookie

__all__ = ["PREVIEW_HEADERS", "ConsoleRoute", "asset", "form", "page"]

_HERE = Path(__file__).resolve().parent
_ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}

# Pages: nothing from elsewhere, no inline script or style, never framed, never cached.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# An email's HTML: a sandbox (no script, no same-origin), no remote image, font or
# style sheet, framed by the console only.
PREVIEW_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
        "frame-ancestors 'self'"
    ),
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def page(
    request: Request, template: str, session: Session, code: int = status.HTTP_200_OK, **context: Any
) -> HTMLResponse:
    """TEMPLATE rendered for SESSION, with the console's security headers and its cookie."""
    body = _templates().get_template(template).render(session=session, path=request.url.path, **context)
    response = HTMLResponse(body, status_code=code, headers=_PAGE_HEADERS)
    write_cookie(response, request, session)
    return response


def asset(name: str) -> Response:
    """One of the console's own style sheet and script (no CDN, no build step)."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    headers = {"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"}
    return Response((_HERE / "static" / name).read_bytes(), media_type=media_type, headers=headers)


async def form(request: Request) -> dict[str, list[str]]:
    """The fields of an urlencoded form (the console posts nothing else)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "expected a form")
    try:
        return parse_qs((await request.body()).decode(), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "malformed form") from None


class ConsoleRoute(APIRoute):
    """A console route: a refusal (403, 404, 409, ...) is a page a person reads, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code < 400:
                    raise  # the way to the sign-in page
                session = await run_in_threadpool(read_session, request)
                return page(request, "problem.html", session, exc.status_code, detail=exc.detail)

        return handle
