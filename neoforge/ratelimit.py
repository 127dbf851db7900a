"""Per-API-key limits per minute, counted in Redis (so across API processes).

Writes count requests and recipients; reads (status polling, listings) count
against an allowance of their own, so a client polling its emails never uses
up what it needs to send.
"""

from __future__ import annotations

import time

from neoforge.store import StatusStore
from neoforge.store.keys import rate_keys, read_rate_key

__all__ = ["RateLimited", "charge", "charge_read"]


class RateLimited(Exception):
    """Raised when a key has used its minute's allowance; ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limit for {what} reached; retry in {retry_after} s")


def charge(store: StatusStore, key: str, *, requests: int, recipients: int,
           max_requests: int, max_recipients: int) -> None:  # fmt: skip
    """Count REQUESTS and RECIPIENTS against KEY's minute (one round trip); raise RateLimited past one."""
    now = time.time()
    used_requests, used_recipients = store.scripts.charge(
        keys=list(rate_keys(key, int(now // 60))), args=[requests, recipients]
    )
    if int(used_requests) > max_requests:
        raise RateLimited("requests", _retry_after(now))
    if int(used_recipients) > max_recipients:
        raise RateLimited("recipients", _retry_after(now))


def charge_read(store: StatusStore, key: str, *, max_reads: int) -> None:
    """Count one read against KEY's minute (one round trip); raise RateLimited past MAX_READS."""
    now = time.time()
    (used,) = store.scripts.charge(keys=[read_rate_key(key, int(now // 60))], args=[1])
    if int(used) > max_reads:
        raise RateLimited("reads", _retry_after(now))


def _retry_after(now: float) -> int:
    # Counters are per calendar minute: the next one starts at the top of it.
    return max(1, 60 - int(now % 60))
