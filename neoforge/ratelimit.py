"""Per-API-key limits on requests and recipients per minute, counted in Redis (so across API processes)."""

from __future__ import annotations

import hashlib
import time
import weakref

import redis
from redis.commands.core import Script

from neoforge.store import PREFIX

__all__ = ["RateLimited", "charge"]


class RateLimited(Exception):
    """Raised when a key has used its minute's allowance; ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limit for {what} reached; retry in {retry_after} s")


# Both counters of the key's current minute, in one round trip.
_CHARGE = """
local requests = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 120)
local recipients = redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 120)
return {requests, recipients}
"""


_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


def charge(client: redis.Redis, key: str, *, requests: int, recipients: int,
           max_requests: int, max_recipients: int) -> None:  # fmt: skip
    """Count REQUESTS and RECIPIENTS against KEY's current minute; raise RateLimited past the limits."""
    now = time.time()
    retry_after = max(1, 60 - int(now % 60))
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]  # never the key itself in Redis
    base = f"{PREFIX}rate:{digest}:{int(now // 60)}"
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(_CHARGE)
    used_requests, used_recipients = script(keys=[f"{base}:requests", f"{base}:recipients"],
                                            args=[requests, recipients])  # fmt: skip
    if int(used_requests) > max_requests:
        raise RateLimited("requests", retry_after)
    if int(used_recipients) > max_recipients:
        raise RateLimited("recipients", retry_after)
