"""The sending-policy routes: the suppression list, webhook dead letters, and one-click unsubscribe.

``/suppressions`` and ``/webhooks`` need an API key like ``/emails``;
``/unsubscribe/{token}`` needs none (RFC 8058: a mail client POSTs it on the
reader's behalf): its signed token is the credential.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, field_validator

from neoforge.addresses import check_mailbox
from neoforge.api.auth import limit_reads, limit_requests, require_key
from neoforge.events import announce, failed
from neoforge.logs import log_event
from neoforge.runtime import current
from neoforge.schemas import Problem
from neoforge.settings import get_settings
from neoforge.suppression import Reason, add, add_hashed, check, entries, remove
from neoforge.unsubscribe import BadToken, read_token
from tasks.webhooks import requeue_failed_webhooks

__all__ = ["suppressions", "unsubscribe", "webhooks"]

logger = logging.getLogger(__name__)

_AUTH: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON (or not UTF-8)."},
    401: {"model": Problem, "description": "Missing or wrong API key."},
    413: {"model": Problem, "description": "Request body larger than API_MAX_REQUEST_BYTES."},
    429: {"model": Problem, "description": "The key's requests or reads per minute are used up."},
    503: {"model": Problem, "description": "Redis unreachable, or API_KEYS not set."},
}
_LINK: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed or forged link.", "content": {"text/html": {}}},
    404: {"description": "Unsubscribe links are not enabled.", "content": {"text/html": {}}},
    413: {"description": "Body larger than API_MAX_REQUEST_BYTES.", "content": {"application/json": {}}},
    503: {"description": "Redis unreachable.", "content": {"application/json": {}}},
}
suppressions = APIRouter(prefix="/suppressions", tags=["policy"], dependencies=[Depends(require_key)],
                         responses=_AUTH)  # fmt: skip
webhooks = APIRouter(
    prefix="/webhooks", tags=["policy"], dependencies=[Depends(require_key)], responses=_AUTH
)
unsubscribe = APIRouter(prefix="/unsubscribe", tags=["policy"], responses=_LINK)


class AddressQuery(BaseModel):
    """One address, and optionally one list id (``List-Id``'s part between <>)."""

    address: str = Field(min_length=3, max_length=320)
    list_id: str | None = Field(
        None, max_length=255, description="Only this list's entry (none: every entry)."
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_mailbox(value, get_settings().email_allow_special_domains, display_name=False).address


class Suppress(AddressQuery):
    """An address to suppress: for every email, or only one list's; for good, or for some days."""

    list_id: str | None = Field(None, max_length=255, description="Only this list's bulk mail (none: all).")
    reason: Reason = "manual"
    expires_in_days: float | None = Field(None, gt=0, le=36500, description="None: until removed.")


class Suppression(BaseModel):
    """One suppression entry (the address masked)."""

    address: str
    list_id: str | None
    reason: str
    added_at: float
    expires_at: float | None


class SuppressionCheck(BaseModel):
    suppressed: bool
    entries: list[Suppression]


class SuppressionPage(BaseModel):
    items: list[Suppression]
    next_before: float | None = Field(None, description="Pass as `before` for the next page.")


@suppressions.post("", status_code=status.HTTP_201_CREATED, response_model=Suppression,
                   dependencies=[Depends(limit_requests)], summary="Suppress an address")  # fmt: skip
def add_suppression(body: Suppress) -> Suppression:
    """Never send to this address again (for LIST_ID's bulk mail only, if given), until removed or expiry."""
    ttl = body.expires_in_days * 86400 if body.expires_in_days else None
    entry = add(current().redis, body.address, list_name=body.list_id, reason=body.reason, ttl=ttl)
    log_event(logger, "suppression.added", reason=body.reason, address=entry.address)
    return Suppression(**entry.as_dict())


@suppressions.post("/check", response_model=SuppressionCheck, dependencies=[Depends(limit_reads)],
                   summary="Is this address suppressed?")  # fmt: skip
def check_suppression(body: AddressQuery) -> SuppressionCheck:
    """The entries in force for this address (list_id narrows it to that list's and the global one)."""
    found = check(current().redis, body.address)
    if body.list_id:
        found = [e for e in found if e.scope in ("*", body.list_id.strip().lower())]
    return SuppressionCheck(suppressed=bool(found), entries=[Suppression(**e.as_dict()) for e in found])


@suppressions.post("/remove", dependencies=[Depends(limit_requests)], summary="Lift a suppression")
def remove_suppression(body: AddressQuery) -> dict[str, int]:
    """Send to this address again (only LIST_ID's entry if given, else every entry)."""
    removed = remove(current().redis, body.address, body.list_id)
    log_event(logger, "suppression.removed", count=removed)
    return {"removed": removed}


@suppressions.get("", response_model=SuppressionPage, dependencies=[Depends(limit_reads)],
                  summary="List suppressed addresses (masked)")  # fmt: skip
def list_suppressions(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, before: float | None = None
) -> SuppressionPage:
    """Entries in force, newest first; addresses masked."""
    found = entries(current().redis, limit, before)
    items = [Suppression(**e.as_dict()) for e in found]
    return SuppressionPage(items=items, next_before=found[-1].added_at if len(found) == limit else None)


@webhooks.get("/failed", dependencies=[Depends(limit_reads)], summary="Webhook deliveries that gave up")
def failed_webhooks(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Dead-lettered deliveries, newest first: the event, the last error, how many tries."""
    return failed(current().redis, limit)


@webhooks.post("/requeue", dependencies=[Depends(limit_requests)], summary="Deliver failed webhooks again")
def requeue_webhooks() -> dict[str, int]:
    """Queue every dead-lettered webhook delivery again (same event ids: receivers can deduplicate)."""
    return {"requeued": requeue_failed_webhooks()}


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, code: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=code)


class _Off(BadToken):
    """Unsubscribe links are not enabled here (no EMAIL_UNSUBSCRIBE_SECRET)."""


def _read(token: str) -> Any:
    secret = get_settings().email_unsubscribe_secret
    if secret is None:
        raise _Off("unsubscribe links are not enabled")
    return read_token(secret.get_secret_value(), token)


def _refused(exc: BadToken) -> HTMLResponse:
    if isinstance(exc, _Off):
        return _page("Not found", f"<p>{html.escape(str(exc))}.</p>", 404)
    return _page("Link not valid", f"<p>{html.escape(str(exc))}.</p>", 400)


@unsubscribe.get("/{token}", response_class=HTMLResponse, summary="Unsubscribe confirmation page")
def unsubscribe_page(token: str) -> HTMLResponse:
    """A page with one button that POSTs the one-click unsubscribe (no JavaScript)."""
    try:
        found = _read(token)
    except BadToken as exc:
        return _refused(exc)
    form = (f"<p>Stop receiving <strong>{html.escape(found.list_id)}</strong> at "
            f"{html.escape(found.masked)}?</p>"
            f'<form method="post" action="{html.escape(token)}"><input type="hidden" name="List-Unsubscribe" '
            'value="One-Click"><button type="submit">Unsubscribe</button></form>')  # fmt: skip
    return _page("Unsubscribe", form)


@unsubscribe.post("/{token}", response_class=HTMLResponse, summary="One-click unsubscribe (RFC 8058)")
def unsubscribe_now(token: str) -> HTMLResponse:
    """Suppress the link's address for the link's list; no login (the signed token is the credential)."""
    try:
        found = _read(token)
    except BadToken as exc:
        return _refused(exc)
    add_hashed(current().redis, found.digest, found.masked, list_name=found.list_id, reason="unsubscribe")
    log_event(logger, "email.unsubscribed", id=found.email_id, list=found.list_id, address=found.masked)
    recipient = {"address": None, "masked": found.masked, "outcome": "unsubscribed"}
    announce(get_settings(), "unsubscribed", found.email_id, status="unsubscribed", list_id=found.list_id,
             recipients=[recipient])  # fmt: skip
    return _page("Unsubscribed", f"<p>{html.escape(found.masked)} will get no more "
                 f"<strong>{html.escape(found.list_id)}</strong> email.</p>")  # fmt: skip
