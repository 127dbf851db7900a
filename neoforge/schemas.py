"""Response models of the HTTP API (the request model is neoforge.message.EmailRequest)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from neoforge.message import DateTimeText

__all__ = [
    "AttemptRecord",
    "BatchQueued",
    "BatchSummary",
    "EmailPage",
    "EmailStatus",
    "Health",
    "Problem",
    "PurgeRequest",
    "Purged",
    "Queued",
    "RecipientOutcome",
    "RequeueFilter",
    "Requeued",
    "email_status",
]

Status = Literal[
    "scheduled", "queued", "sending", "retrying", "sent", "failed", "expired", "cancelled", "suppressed"
]


class Queued(BaseModel):
    """The email was accepted under ``id``: queued, or scheduled for ``send_at``.

    With a repeated idempotency key, ``id`` and ``status`` are the earlier email's.
    """

    id: str = Field(description="The email id (also the Celery task id).")
    status: Status = "queued"


class RecipientOutcome(BaseModel):
    """What happened to one recipient; the address is masked (z***@example.com), never stored whole."""

    address: str
    outcome: Literal["delivered", "deferred", "rejected", "held"] = Field(
        description="delivered; deferred (4xx: retried, only this recipient); rejected (5xx); "
        "held (not sent by EMAIL_ALLOWED_DOMAINS)."
    )
    code: int | None = None
    message: str = ""


class AttemptRecord(BaseModel):
    """One delivery attempt."""

    attempt: int = Field(description="1 for the first attempt.")
    started_at: str
    finished_at: str
    duration_ms: float
    worker: str = Field(description="Celery hostname of the worker that tried.")
    outcome: Literal["sent", "retry", "failed", "requeued", "paused", "throttled", "failover", "unknown"] = (
        Field(description="paused, throttled and failover attempts do not count against the retries.")
    )
    provider: str | None = Field(None, description="The SMTP provider that handled it (name or host:port).")
    smtp_code: int | None = Field(None, description="The SMTP reply code, when the server gave one.")
    error: str | None = None
    error_class: str | None = None
    retry_in: float | None = Field(None, description="Seconds until the next attempt, for outcome=retry.")
    smtp_reply: str | None = Field(None, description="The server's reply to DATA, for outcome=sent.")


class EmailStatus(BaseModel):
    """Where an email is: status, attempts, last error, timestamps and every attempt."""

    id: str
    status: Status
    attempts: int = Field(description="Delivery attempts started so far.")
    last_error: str | None = Field(
        None, description="SMTP code and text, or the exception, of the last failure."
    )
    last_smtp_code: int | None = None
    error_class: str | None = Field(None, description="smtp_4xx, smtp_5xx, connection, timeout, ...")
    created_at: str
    updated_at: str
    sent_at: str | None = None
    failed_at: str | None = None
    next_attempt_at: str | None = None
    template: str | None = None
    priority: str | None = None
    send_at: str | None = None
    expires_at: str | None = None
    requeued_at: str | None = None
    purged_at: str | None = Field(
        None, description="When the stored content was deleted (DELETE /emails/{id})."
    )
    recipients: int = Field(0, description="Number of envelope recipients.")
    queue: str | None = None
    delivered: Literal["all", "some", "none"] | None = Field(
        None, description="How many recipients the server accepted the email for, once it answered."
    )
    outcomes: list[RecipientOutcome] = Field(default_factory=list, description="Each recipient, masked.")
    timeline: list[AttemptRecord] = Field(default_factory=list)


def email_status(record: dict[str, Any]) -> EmailStatus:
    """The public status of a stored record (as ``GET /emails/{id}`` answers): empty fields left out."""
    return EmailStatus.model_validate({k: v for k, v in record.items() if v != ""})


class Health(BaseModel):
    """Liveness of the API and its Redis."""

    status: Literal["ok", "unavailable"]
    redis: str


class Problem(BaseModel):
    """An error response."""

    detail: str


class EmailPage(BaseModel):
    """One page of emails, newest first."""

    items: list[EmailStatus]
    next_before: float | None = Field(
        None, description="Pass as ``before`` for the next page; null at the end."
    )


class RequeueFilter(BaseModel):
    """Which failed emails to requeue; empty means all."""

    error_class: str | None = Field(None, description="Only this error class, e.g. smtp_4xx or connection.")
    failed_before: DateTimeText | None = Field(None, description="Only emails that failed before this time.")


class Requeued(BaseModel):
    """How many failed emails were queued again."""

    requeued: int


class Purged(BaseModel):
    """How many emails had their stored content deleted."""

    purged: int


class PurgeRequest(BaseModel):
    """An erasure request: every email to this address."""

    address: str = Field(min_length=3, max_length=320, description="The recipient address (to, cc or bcc).")


class BatchQueued(BaseModel):
    """A bulk send was queued: its batch id and one email id per recipient, in order."""

    batch_id: str
    ids: list[str]


class BatchSummary(BaseModel):
    """How many emails of a bulk send are in each status."""

    id: str
    total: int
    template: str | None = None
    created_at: str | None = None
    counts: dict[str, int] = Field(description="status -> number of emails")
