"""The console's forms: find emails by recipient (any role); requeue, cancel, delete content (operators).

Every form carries the session's CSRF token. Actions call what the API's
routes call (neoforge.deadletters, the status store), nothing of their own.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from neoforge.console.listing import Filters, by_recipient
from neoforge.console.pages import CLASSES, STATUSES, Viewer
from neoforge.console.session import Session, check_csrf
from neoforge.console.web import ConsoleRoute, form, page
from neoforge.deadletters import requeue, requeue_all
from neoforge.errors import EmailNotFound
from neoforge.logs import log_event
from neoforge.runtime import current

__all__ = ["actions"]

logger = logging.getLogger(__name__)

actions = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)
_PAGE = 50


async def _checked_form(request: Request, session: Session, *, operator: bool) -> dict[str, list[str]]:
    fields = await form(request)
    check_csrf(request, session, fields.get("csrf", [""])[0])
    if operator and not session.operator:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "operators only: this account may only read")
    return fields


def _see(url: str) -> Response:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


@actions.post("/emails/find")
async def find(request: Request, session: Viewer) -> HTMLResponse:
    """Emails to one exact address, through the hashed recipient index (a POST: no address in a URL)."""
    fields = await _checked_form(request, session, operator=False)
    address = fields.get("address", [""])[0].strip()
    given = fields.get("offset", [""])[0]
    offset = int(given) if given.isdigit() else 0
    store = current().store
    rows = await run_in_threadpool(by_recipient, store, address, Filters()) if address else []
    log_event(logger, "console.found", user=session.name, emails=len(rows))
    return page(request, "emails.html", session, rows=rows[offset : offset + _PAGE], filters=Filters(),
                next_cursor="", statuses=STATUSES, classes=CLASSES, address=address,
                searched=True, next_offset=offset + _PAGE if len(rows) > offset + _PAGE else 0)  # fmt: skip


@actions.post("/emails/{email_id}/requeue")
async def requeue_one(request: Request, session: Viewer, email_id: str) -> Response:
    await _checked_form(request, session, operator=True)
    try:
        done = await run_in_threadpool(requeue, email_id)
    except EmailNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no email with this id") from None
    if not done:
        raise HTTPException(status.HTTP_409_CONFLICT, "only a failed email with its content can be requeued")
    log_event(logger, "console.requeued", user=session.name, id=email_id)
    return _see(f"/console/emails/{email_id}")


@actions.post("/emails/{email_id}/delete")
async def delete_content(request: Request, session: Viewer, email_id: str) -> Response:
    """Delete the email's stored content; an unsent email is cancelled (the API's DELETE /emails/{id})."""
    await _checked_form(request, session, operator=True)
    status_now = await run_in_threadpool(current().store.purge, email_id)
    if status_now is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no email with this id")
    log_event(logger, "console.purged", user=session.name, id=email_id, status=status_now)
    return _see(f"/console/emails/{email_id}")


@actions.post("/dead-letters/requeue")
async def requeue_dead_letters(request: Request, session: Viewer) -> Response:
    """Requeue one error class of dead letters, or the selected ones."""
    fields = await _checked_form(request, session, operator=True)
    error_class = fields.get("error_class", [""])[0]
    if error_class:
        count = await run_in_threadpool(requeue_all, error_class)
    else:
        count = await run_in_threadpool(_requeue_each, fields.get("id", [])[:500])
    log_event(logger, "console.requeued", user=session.name, count=count, error_class=error_class or None)
    return _see(f"/console/dead-letters?requeued={count}")


def _requeue_each(ids: list[str]) -> int:
    count = 0
    for email_id in ids:
        try:
            count += requeue(email_id)
        except EmailNotFound:
            continue
    return count
