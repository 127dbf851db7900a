"""The console's pages (GET) and its sign-in; the actions (POST) are in ``actions``."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from neoforge.console.listing import Filters, batches, dead_letter_classes, emails, preview
from neoforge.console.overview import KINDS, chart, overview
from neoforge.console.passwords import accounts, verify_password
from neoforge.console.session import (
    Session,
    check_csrf,
    key_fingerprint,
    new_session,
    read_session,
    signin_allowed,
    signin_failed,
    write_cookie,
)
from neoforge.console.web import PREVIEW_HEADERS, ConsoleRoute, asset, form, page
from neoforge.errors import ErrorClass
from neoforge.logs import log_event
from neoforge.runtime import current
from neoforge.settings import get_settings
from neoforge.store.batches import batch_summary

__all__ = ["CLASSES", "STATUSES", "Viewer", "pages", "signed_in"]

logger = logging.getLogger(__name__)

pages = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)

CLASSES = tuple(c.value for c in ErrorClass)
STATUSES = ("scheduled", "queued", "sending", "retrying", "sent", "failed", "expired", "cancelled")


def signed_in(request: Request) -> Session:
    """The signed-in visitor; anyone else is sent to the sign-in page."""
    session = read_session(request)
    if not session.signed_in:
        raise HTTPException(status.HTTP_303_SEE_OTHER, headers={"Location": "/console/login"})
    return session


Viewer = Annotated[Session, Depends(signed_in)]


@pages.get("/static/{name}")
def static(name: str) -> Response:
    return asset(name)


@pages.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", read_session(request), error="")


@pages.post("/login")
async def login(request: Request) -> Response:
    """Sign in with an operator account (name and password) or an API key."""
    session = read_session(request)
    fields = await form(request)
    check_csrf(request, session, fields.get("csrf", [""])[0])
    if not await run_in_threadpool(signin_allowed, request):
        return page(request, "login.html", session, status.HTTP_429_TOO_MANY_REQUESTS,
                    error="Too many failed sign-ins from this address: try again in 15 minutes.")  # fmt: skip
    name, password = fields.get("name", [""])[0], fields.get("password", [""])[0]
    key = fields.get("key", [""])[0]
    signed = await run_in_threadpool(_check, name, password, key)
    if signed is None:
        await run_in_threadpool(signin_failed, request)
        log_event(logger, "console.signin_failed", logging.WARNING, kind="key" if key else "user")
        return page(request, "login.html", session, status.HTTP_401_UNAUTHORIZED,
                    error="Wrong name and password, or API key.")  # fmt: skip
    log_event(logger, "console.signed_in", kind=signed.kind, user=signed.name)
    response = RedirectResponse("/console", status_code=status.HTTP_303_SEE_OTHER)
    write_cookie(response, request, signed)
    return response


def _check(name: str, password: str, key: str) -> Session | None:
    settings = get_settings()
    if key:
        matched = ""
        for known in settings.api_keys:  # every key compared, each in constant time
            if hmac.compare_digest(key.encode(), known.encode()):
                matched = known
        if not matched or settings.console_api_key_role == "none":
            return None
        return new_session(f"API key {key_fingerprint(matched)[:8]}", "key", key_fingerprint(matched))
    account = accounts(settings.console_users).get(name)
    if not verify_password(password, account.hashed if account else None) or account is None:
        return None
    return new_session(account.name, "user", account.fingerprint)


@pages.post("/logout")
async def logout(request: Request) -> Response:
    check_csrf(request, read_session(request), (await form(request)).get("csrf", [""])[0])
    response = RedirectResponse("/console/login", status_code=status.HTTP_303_SEE_OTHER)
    write_cookie(response, request, None)
    return response


@pages.get("")
def overview_page(request: Request, session: Viewer) -> HTMLResponse:
    found = overview(current().redis)
    return page(request, "overview.html", session, o=found, chart=chart(found.series), kinds=KINDS)


@pages.get("/overview/panel")
def overview_panel(request: Request, session: Viewer) -> HTMLResponse:
    """The overview's figures alone, fetched every few seconds by console.js."""
    found = overview(current().redis)
    return page(request, "overview_panel.html", session, o=found, chart=chart(found.series), kinds=KINDS)


@pages.get("/emails")
def email_list(request: Request, session: Viewer) -> HTMLResponse:
    """Emails by status, priority, error class, batch and creation time; paged."""
    query = request.query_params
    names = ("status", "priority", "error_class", "batch", "since", "until")
    filters = Filters(*(query.get(name, "").strip() for name in names))
    cursor = query.get("cursor", "")
    rows, next_cursor = emails(current().redis, filters, cursor if cursor.isdigit() else "")
    return page(request, "emails.html", session, rows=rows, filters=filters, next_cursor=next_cursor,
                statuses=STATUSES, classes=CLASSES, address="", searched=False)  # fmt: skip


@pages.get("/emails/{email_id}")
def email_page(request: Request, session: Viewer, email_id: str) -> HTMLResponse:
    store = current().store
    record = store.get(email_id)
    if record is None:
        return page(request, "missing.html", session, status.HTTP_404_NOT_FOUND, what="email", id=email_id)
    return page(request, "email.html", session, email=record, preview=preview(store, email_id))


@pages.get("/emails/{email_id}/preview")
def email_preview(session: Viewer, email_id: str) -> HTMLResponse:
    """The email's HTML alone, for the sandboxed frame: no script, no remote image."""
    shown = preview(current().store, email_id)
    if shown is None or shown.html is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no HTML content kept for this email")
    return HTMLResponse(shown.html, headers=PREVIEW_HEADERS)


@pages.get("/dead-letters")
def dead_letters(request: Request, session: Viewer, cursor: str = "") -> HTMLResponse:
    client = current().redis
    rows, next_cursor = emails(client, Filters(status="failed"), cursor if cursor.isdigit() else "")
    return page(request, "deadletters.html", session, classes=dead_letter_classes(client), rows=rows,
                next_cursor=next_cursor, done=request.query_params.get("requeued", ""))  # fmt: skip


@pages.get("/batches")
def batch_list(request: Request, session: Viewer) -> HTMLResponse:
    return page(request, "batches.html", session, batches=batches(current().redis))


@pages.get("/batches/{batch_id}")
def batch_page(request: Request, session: Viewer, batch_id: str) -> HTMLResponse:
    summary = batch_summary(current().redis, batch_id)
    if summary is None:
        return page(request, "missing.html", session, status.HTTP_404_NOT_FOUND, what="batch", id=batch_id)
    return page(request, "batch.html", session, batch=summary, statuses=(*STATUSES, "expired_record"))
