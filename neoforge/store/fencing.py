"""The writes of one delivery attempt, each refused once another sender took the email over.

Every take of an email's lease adds one to the record's ``fence``
(lua/begin.lua) and the attempt carries that number. Each write the attempt
makes afterwards (the DATA mark, retrying, paused, failed, suppressed, the
attempt given back; ``sent`` in records.py) first checks, in the same Lua
script, that the fence is still the attempt's. A sender that comes back from
a partition, or was stopped past its heartbeat, so finds its writes refused
(``LeaseLost``, counted as ``fenced|<write>``): it neither sends nor records.
A FENCE of ``""`` marks a write outside any attempt (an operator's, a parent
process's late verdict), which is not checked.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from neoforge.errors import LeaseLost
from neoforge.store.encoding import Attempt, as_json, now_iso
from neoforge.store.keys import (
    FAILED,
    METRICS,
    MINUTE_TTL,
    PENDING,
    attempts_key,
    email_key,
    lease_key,
    minute_key,
    payload_key,
)
from neoforge.store.scripts import Scripts

__all__ = ["AttemptWrites"]


class AttemptWrites:
    """The fenced writes of an attempt on the status store (mixed into ``StatusStore``)."""

    client: redis.Redis
    scripts: Scripts
    status_ttl: int

    def mark_data_started(self, email_id: str, attempt: int, fence: str) -> None:
        """Attempt ATTEMPT is about to send DATA: if it is interrupted, never send the email again.

        Raises LeaseLost (send nothing) when another sender took the email over.
        """
        if not self.scripts.mark_data(keys=[email_key(email_id), METRICS], args=[fence, attempt]):
            raise LeaseLost(email_id, "data")

    def _settle(
        self, email_id: str, fence: str, write: str, *, fields: dict[str, Any] | None = None,
        gone: tuple[str, ...] = (), attempts: int = 0, entry: Attempt | None = None,
        counters: tuple[str, ...] = (), minute: str = "", end: str = "",
    ) -> None:  # fmt: skip
        """One fenced write (lua/settle.lua); raises LeaseLost when it is refused."""
        this_minute = minute_key(int(time.time() // 60))  # the console's chart: the host's minute
        done = self.scripts.settle(
            keys=[email_key(email_id), attempts_key(email_id), payload_key(email_id), lease_key(email_id),
                  PENDING, FAILED, METRICS, this_minute],
            args=[email_id, fence, write, as_json(fields or {}), as_json(list(gone)), attempts,
                  as_json(entry) if entry is not None else "", as_json(list(counters)), minute, MINUTE_TTL,
                  end, self.status_ttl],
        )  # fmt: skip
        if not done:
            raise LeaseLost(email_id, write)

    def mark_retrying(
        self, email_id: str, attempt: Attempt, next_attempt_at: str, priority: str,
        extra: dict[str, str] | None = None, fence: str = "",
    ) -> None:  # fmt: skip
        """The attempt failed transiently (EXTRA: recipient outcomes, who is left); another is scheduled."""
        fields = {**(extra or {}), "status": "retrying", "updated_at": attempt["finished_at"],
                  "last_error": attempt["error"], "last_smtp_code": attempt.get("smtp_code") or "",
                  "error_class": attempt["error_class"], "next_attempt_at": next_attempt_at}  # fmt: skip
        counter = f"retried|{priority}|{attempt['error_class']}"
        self._settle(email_id, fence, "retrying", fields=fields, entry=attempt, counters=(counter,),
                     minute="retried")  # fmt: skip

    def mark_paused(self, email_id: str, attempt: Attempt, next_attempt_at: str, fence: str = "") -> None:
        """Sending is paused (a setup failure): the email waits; this attempt does not count."""
        fields = {"status": "retrying", "updated_at": attempt["finished_at"], "last_error": attempt["error"],
                  "error_class": attempt["error_class"], "next_attempt_at": next_attempt_at}  # fmt: skip
        self._settle(email_id, fence, "paused", fields=fields, attempts=-1, entry=attempt)

    def mark_suppressed(
        self, email_id: str, attempt: Attempt, priority: str, extra: dict[str, str], fence: str = ""
    ) -> None:
        """Every recipient left is on the suppression list: the email ends unsent, its content dropped."""
        fields = {"status": "suppressed", "updated_at": attempt["finished_at"], "next_attempt_at": ""}
        fields.update(extra)
        # attempts -1: the server was never contacted.
        self._settle(email_id, fence, "suppressed", fields=fields, gone=("rcpt_todo",), attempts=-1,
                     entry=attempt, counters=(f"suppressed|{priority}",), end="done")  # fmt: skip

    def mark_failed(
        self, email_id: str, attempt: Attempt, priority: str | None = None,
        extra: dict[str, str] | None = None, fence: str = "",
    ) -> None:  # fmt: skip
        """Delivery gave up: keep the record and payload (no expiry) in the dead-letter index.

        EXTRA: recipient outcomes and who is left, so a requeue sends only to them.
        """
        if priority is None:
            priority = str(self.client.hget(email_key(email_id), "priority") or "transactional")
        fields = {**(extra or {}), "status": "failed", "updated_at": attempt["finished_at"],
                  "failed_at": attempt["finished_at"], "last_error": attempt["error"],
                  "last_smtp_code": attempt.get("smtp_code") or "", "error_class": attempt["error_class"],
                  "next_attempt_at": ""}  # fmt: skip
        counter = f"failed|{priority}|{attempt.get('error_class') or 'unknown'}"
        self._settle(email_id, fence, "failed", fields=fields, entry=attempt, counters=(counter,),
                     minute="failed", end="dead")  # fmt: skip

    def fail_if_sending(self, email_id: str, attempt: Attempt) -> bool:
        """mark_failed, but only while the email is still sending (a late, parent-side verdict)."""
        if self.client.hget(email_key(email_id), "status") != "sending":
            return False
        self.mark_failed(email_id, attempt)
        return True

    def give_back(self, email_id: str, number: int, fence: str = "") -> None:
        """Undo a take before anything was sent (a rate limit said wait): the attempt does not count."""
        fields = {"status": "retrying" if number > 1 else "queued", "updated_at": now_iso()}
        self._settle(email_id, fence, "given_back", fields=fields, attempts=-1)

    def retry_unknown(self, email_id: str, entry: Attempt, fence: str = "") -> None:
        """Forget a gone sender's "DATA began" mark, to send again (EMAIL_UNKNOWN_OUTCOME=retry)."""
        self._settle(email_id, fence, "retry_unknown", gone=("data_attempt",), entry=entry)
