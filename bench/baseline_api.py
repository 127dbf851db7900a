"""The baseline HTTP endpoint: a FastAPI route that calls the baseline task's ``.delay()``.

``uvicorn bench.baseline_api:app``. Like NeoForge Mail's ``POST /emails`` it
checks a bearer key (``API_KEYS``), validates the addresses and answers 202 with
the task id; it keeps no status record and has no rate limit.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, EmailStr

from bench.baseline import send_email

__all__ = ["app"]

app = FastAPI(title="baseline")
_bearer = HTTPBearer(auto_error=False)


class EmailIn(BaseModel):
    """The email to queue."""

    to: list[EmailStr]
    subject: str
    text: str
    html: str


class Queued(BaseModel):
    """The queued email's id."""

    id: str
    status: str


def _require_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    given = credentials.credentials.encode() if credentials else b""
    keys = [key for key in os.environ.get("API_KEYS", "").split(",") if key]
    if not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong API key")


@app.post("/emails", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(_require_key)])
def queue_email(email: EmailIn) -> Queued:
    """Queue the email with ``send_email.delay`` and return its task id."""
    result = send_email.delay(
        to=[str(address) for address in email.to], subject=email.subject, text=email.text, html=email.html
    )
    return Queued(id=result.id, status="queued")


@app.get("/health")
def health() -> dict[str, str]:
    """Always ok: the benchmark waits for this before it starts."""
    return {"status": "ok"}
