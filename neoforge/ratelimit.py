"""Per-API-key limits on requests and recipients per minute, counted in Redis (so across API processes)."""

from __future__ import annotations

import time

from neoforge.store import StatusStore
from neoforge.store.keys import rate_keys

__all__ = ["RateLimited", "charge"]


class RateLimited(Exception):
    """Raised when a key has used its minute's allowance; ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limit for {what} reached; retry in {retry_after} s")


def charge(store: StatusStore, key: str, *, requests: int, recipients: int,
           max_requests: int, max_recipients: int) -> None:  # fmt: skip
    """Count REQUESTS and RECIPIENTS against KEY's minute (one round trip); raise RateLimited past one."""
    now = time.time()
    retry_after = max(1, 60 - int(now % 60))
    used_requests, used_recipients = store.scripts.charge(
        keys=list(rate_keys(key, int(now // 60))), args=[requests, recipients]
    )
    if int(used_requests) > max_requests:
        raise RateLimited("requests", retry_after)
    if int(used_recipients) > max_recipients:
        raise RateLimited("recipients", retry_after)
