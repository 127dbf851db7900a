"""Per-API-key limits per minute, counted in Redis (so across API processes).

Writes count requests and recipients; reads (status polling, listings) count
against an allowance of their own, so a client polling its emails never uses
up what it needs to send. Queueing one email charges inside the script that
records it (``Charge``): one round trip for both.
"""

from __future__ import annotations

import time

from neoforge.errors import RateLimited
from neoforge.store import StatusStore
from neoforge.store.admission import Charge
from neoforge.store.keys import rate_keys, read_rate_key

__all__ = ["Charge", "RateLimited", "charge", "charge_for", "charge_read"]


def charge_for(key: str, *, requests: int, recipients: int, max_requests: int, max_recipients: int) -> Charge:
    """What to count against KEY's current minute, for a write that charges as it records."""
    now = time.time()
    requests_key, recipients_key = rate_keys(key, int(now // 60))
    return Charge(requests_key, recipients_key, requests, recipients, max_requests, max_recipients,
                  _retry_after(now))  # fmt: skip


def charge(store: StatusStore, key: str, *, requests: int, recipients: int,
           max_requests: int, max_recipients: int) -> None:  # fmt: skip
    """Count REQUESTS and RECIPIENTS against KEY's minute (one round trip); raise RateLimited past one."""
    spec = charge_for(key, requests=requests, recipients=recipients, max_requests=max_requests,
                      max_recipients=max_recipients)  # fmt: skip
    used = store.scripts.charge(keys=[spec.requests_key, spec.recipients_key], args=[requests, recipients])
    spec.check(int(used[0]), int(used[1]))


def charge_read(store: StatusStore, key: str, *, max_reads: int) -> None:
    """Count one read against KEY's minute (one round trip); raise RateLimited past MAX_READS."""
    now = time.time()
    (used,) = store.scripts.charge(keys=[read_rate_key(key, int(now // 60))], args=[1])
    if int(used) > max_reads:
        raise RateLimited("reads", _retry_after(now))


def _retry_after(now: float) -> int:
    # Counters are per calendar minute: the next one starts at the top of it.
    return max(1, 60 - int(now % 60))
