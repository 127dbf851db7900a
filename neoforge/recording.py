"""How the end of an attempt is written: status record, timeline entry, metrics and one log line.

Outcomes the SMTP server gave us are written with retries while Redis is away
(``persist``): lose one, and the email's ledger keeps its "DATA began" mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from neoforge.errors import DeliveryError, ErrorClass, PermanentDeliveryError, TransientDeliveryError
from neoforge.journal import Journal
from neoforge.logs import log_event
from neoforge.redact import mask_addresses
from neoforge.retry import retry_delay
from neoforge.settings import Settings
from neoforge.store import Attempt, StatusStore, event, iso, now_iso

__all__ = [
    "Attempting",
    "persist",
    "record_failure",
    "record_internal",
    "record_lost_in_data",
    "record_retry",
    "record_success",
    "replies",
]

logger = logging.getLogger(__name__)

# Seconds a sent email's record is tried before it goes to the journal instead.
_RECORD_WAIT = 3.0


@dataclass
class Attempting:
    """One email whose lease we hold: attempt number ``number``, started now."""

    email_id: str
    number: int
    created: float
    priority: str
    worker: str
    started: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.monotonic)
    provider: str = ""  # the SMTP provider's name (never its credentials)
    fence: str = ""  # the lease's fencing token: every write of this attempt checks it

    def entry(self, outcome: str, **extra: Any) -> Attempt:
        """This attempt's timeline entry."""
        return {
            "attempt": self.number,
            "started_at": self.started,
            "finished_at": now_iso(),
            "duration_ms": round((time.monotonic() - self.t0) * 1000, 1),
            "worker": self.worker,
            "outcome": outcome,
            **({"provider": self.provider} if self.provider else {}),
            **extra,
        }


def persist(write: Callable[[], None], seconds: float = 30.0) -> None:
    """WRITE, tried again every half second for up to SECONDS while Redis is unreachable.

    For outcomes the server gave us: lose one, and the email's ledger keeps
    its "DATA began" mark, so the email ends as an ``outcome_unknown`` dead
    letter instead of being retried or marked sent. Raises the last error.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            write()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def record_failure(
    store: StatusStore,
    job: Attempting,
    exc: DeliveryError,
    fields: dict[str, str] | None = None,
    **extra: Any,
) -> None:
    details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
    entry = job.entry("failed", **details)
    persist(lambda: store.mark_failed(job.email_id, entry, job.priority, fields, job.fence))
    log_event(logger, "email.failed", logging.WARNING, id=job.email_id, status="failed", attempt=job.number,
              smtp_code=exc.code, error_class=exc.error_class, duration_ms=entry["duration_ms"],
              worker=job.worker, **extra)  # fmt: skip


def record_internal(store: StatusStore, job: Attempting, exc: BaseException) -> PermanentDeliveryError:
    # A defect of ours: dead-letter the email with the error type, so it can
    # be requeued once fixed.
    details = {"error": f"internal error: {type(exc).__name__}", "error_class": "internal"}
    store.mark_failed(job.email_id, job.entry("failed", **details), job.priority, fence=job.fence)
    return PermanentDeliveryError(f"internal error: {type(exc).__name__}", None, ErrorClass.INTERNAL)


def record_lost_in_data(store: StatusStore, email_id: str, number: int, worker: str, fence: str) -> None:
    # Its sender stopped (killed, or Redis gone right after the 250) once DATA
    # had begun: the server may have the message, so a person decides.
    error = f"outcome unknown: the sender of attempt {number} stopped after DATA began"
    store.mark_failed(email_id, event("failed", error, "outcome_unknown", worker), fence=fence)
    log_event(logger, "email.failed", logging.WARNING, id=email_id, status="failed", attempt=number,
              error_class="outcome_unknown", worker=worker)  # fmt: skip


def record_retry(
    store: StatusStore,
    job: Attempting,
    exc: TransientDeliveryError,
    settings: Settings,
    extra: dict[str, str] | None = None,
) -> float:
    """Record a transient failure (EXTRA: recipient outcomes); return the delay before the next attempt."""
    details = {"error": str(exc), "smtp_code": exc.code, "error_class": exc.error_class}
    delay = retry_delay(job.number, settings.email_retry_backoff, settings.email_retry_backoff_max)
    next_at = iso(datetime.now(UTC) + timedelta(seconds=delay))
    entry = job.entry("retry", retry_in=round(delay, 3), **details)
    persist(lambda: store.mark_retrying(job.email_id, entry, next_at, job.priority, extra, job.fence))
    log_event(logger, "email.retrying", id=job.email_id, status="retrying", attempt=job.number,
              smtp_code=exc.code, error_class=exc.error_class, duration_ms=entry["duration_ms"],
              retry_in=round(delay, 3), worker=job.worker)  # fmt: skip
    return delay


def replies(refusals: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['code']} {mask_addresses(str(r['message']))}" for r in refusals)[:500]


def record_success(
    store: StatusStore, job: Attempting, reply: str, fields: dict[str, str], delivered: str, journal: Journal
) -> None:
    entry = job.entry("sent", smtp_reply=mask_addresses(reply[:200]), delivered=delivered)
    latency = time.time() - job.created if job.created else 0.0
    # The server has the message. If Redis will not take the record (full, its
    # disk failing, away), the acceptance goes to this host's journal and into
    # Redis once it takes writes again; never a dead letter, never sent twice.
    try:
        persist(lambda: store.mark_sent(job.email_id, entry, job.priority, latency, fields, job.fence),
                _RECORD_WAIT)  # fmt: skip
    except redis.RedisError as exc:
        try:
            journal.add(email_id=job.email_id, attempt=entry, priority=job.priority, latency=latency,
                        extra=fields, fence=job.fence)  # fmt: skip
            log_event(logger, "email.sent_journaled", logging.WARNING, id=job.email_id,
                      reason=type(exc).__name__)  # fmt: skip
        except OSError as failed:
            # Not even the disk: the ledger's "DATA began" mark still keeps it from being sent twice.
            log_event(logger, "email.sent_unrecorded", logging.ERROR, id=job.email_id,
                      reason=f"{type(exc).__name__}, journal: {type(failed).__name__}")  # fmt: skip
    log_event(logger, "email.sent", id=job.email_id, status="sent", attempt=job.number,
              duration_ms=entry["duration_ms"], delivered=delivered, worker=job.worker)  # fmt: skip
