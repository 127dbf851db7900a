"""Per-API-key limits on requests and recipients per minute, counted in Redis (so across API processes)."""

from __future__ import annotations

import hashlib
import time

import redis

from neoforge.store import PREFIX

__all__ = ["RateLimited", "charge"]


class RateLimited(Exception):
    """Raised when a key has used its minute's allowance; ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limit for {what} reached; retry in {retry_after} s")


def charge(client: redis.Redis, key: str, *, requests: int, recipients: int,
           max_requests: int, max_recipients: int) -> None:  # fmt: skip
    """Count REQUESTS and RECIPIENTS against KEY's current minute; raise RateLimited past the limits."""
    now = time.time()
    minute = int(now // 60)
    retry_after = max(1, 60 - int(now % 60))
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]  # never the key itself in Redis
    base = f"{PREFIX}rate:{digest}:{minute}"
    with client.pipeline(transaction=True) as pipe:
        pipe.incrby(f"{base}:requests", requests)
        pipe.expire(f"{base}:requests", 120)
        pipe.incrby(f"{base}:recipients", recipients)
        pipe.expire(f"{base}:recipients", 120)
        used_requests, _, used_recipients, _ = pipe.execute()
    if used_requests > max_requests:
        raise RateLimited("requests", retry_after)
    if used_recipients > max_recipients:
        raise RateLimited("recipients", retry_after)
