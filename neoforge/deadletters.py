"""Dead letters: failed emails kept for a person to look at, and requeued one by one or all at once.

App layer: a requeue publishes through the ``send_email`` task.
"""

from __future__ import annotations

import logging
from typing import Any

from neoforge.errors import EmailNotFound, QueueUnavailable
from neoforge.logs import log_event
from neoforge.runtime import current
from neoforge.store import event
from tasks import send_email

__all__ = ["list_failed", "requeue", "requeue_all"]

logger = logging.getLogger(__name__)


def list_failed(limit: int = 50, before: float | None = None) -> tuple[list[dict[str, Any]], float | None]:
    """Failed emails, newest first, and the cursor for the next page (None at the end)."""
    store = current().store
    rows = store.failed(limit, before)
    records = []
    for email_id, _ in rows:
        record = store.get(email_id)
        if record is not None:
            records.append(record)
    cursor = rows[-1][1] if len(rows) == limit else None
    return records, cursor


def requeue(email_id: str) -> bool:
    """Send a failed email again under the same id; False if it is not failed or was purged.

    Raises EmailNotFound for an unknown id.
    """
    store = current().store
    record = store.get(email_id)
    if record is None:
        raise EmailNotFound(email_id)
    if not store.requeue(email_id):
        return False
    try:
        # Already in the pending index (store.requeue): a lost publish is recovered.
        send_email.publish(email_id, queue=record.get("queue") or None, first=True)
    except QueueUnavailable:
        # Back to the dead letters, with the reason in its history.
        store.mark_failed(email_id, event("failed", "requeue could not publish", "requeue"))
        raise
    log_event(logger, "email.requeued", id=email_id)
    return True


def requeue_all(error_class: str | None = None, failed_before: float | None = None) -> int:
    """Requeue every failed email (optionally only ERROR_CLASS, or failed before an epoch time)."""
    store = current().store
    count = 0
    cursor = failed_before
    while True:
        rows = store.failed(500, cursor)
        if not rows:
            return count
        for email_id, _ in rows:
            if error_class is not None:
                record = store.get(email_id)
                if record is None or record.get("error_class") != error_class:
                    continue
            if requeue(email_id):
                count += 1
        cursor = rows[-1][1]
