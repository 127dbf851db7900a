"""``/docs`` (Swagger UI) and ``/redoc`` from files served by the API itself, not from a CDN.

The scripts and styles are the ones the pinned ``fastapi-offline`` package ships (MIT); the pages
are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``), pointed at them, as FastAPI's
documentation shows for self-hosting. So the docs work on a laptop without internet.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["add_docs"]

STATIC_PATH = "/docs-static"
# The pages may load from this API only: ReDoc would fetch a logo from its CDN otherwise.
# Inline: the pages' own start-up script and the styles both UIs inject; blob: ReDoc's worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def add_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc with local assets (create APP with docs_url=None, redoc_url=None)."""
    assets = Path(str(files("fastapi_offline") / "static"))
    app.mount(STATIC_PATH, StaticFiles(directory=assets), name="docs-static")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    redirect = "/docs/oauth2-redirect"

    async def swagger_ui() -> HTMLResponse:
        return _local_only(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{title} - Swagger UI",
                oauth2_redirect_url=redirect,
                swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{STATIC_PATH}/favicon.png",
            )
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return _local_only(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{STATIC_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{STATIC_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route(redirect, oauth2_redirect, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
