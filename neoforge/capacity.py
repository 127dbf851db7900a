"""Room left in Redis: whether queueing may still write, and whether Redis takes writes at all.

Queueing stops at REDIS_MEMORY_HEADROOM percent below ``maxmemory``, so the
writes workers need to finish what is queued (acknowledgements, outcomes, the
write that frees a sent email's content) still fit when the API refuses new
mail. Workers stop taking new messages only when Redis itself refuses writes:
at ``maxmemory`` (``noeviction``) or with persistence failing (MISCONF).

Read from INFO (memory and persistence), at most once a second per process:
never a round trip per email.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from neoforge.errors import QueueFull
from neoforge.redis_client import safe_url

__all__ = ["RESUME_BELOW", "Capacity", "Storage", "read"]

# Workers pause at this share of maxmemory (a message taken from the broker
# must still be recorded as unacknowledged) and resume below the second.
_PAUSE_AT = 0.99
RESUME_BELOW = 0.97


@dataclass(frozen=True)
class Storage:
    """What INFO said about Redis's memory and persistence."""

    used: int
    limit: int  # maxmemory; 0 when unlimited
    aof_ok: bool
    rdb_ok: bool

    @property
    def persistence_ok(self) -> bool:
        return self.aof_ok and self.rdb_ok

    def share(self) -> float:
        """Used memory as a share of maxmemory (0 when unlimited)."""
        return self.used / self.limit if self.limit else 0.0

    def refusing(self, threshold: float = _PAUSE_AT) -> str | None:
        """Why Redis refuses (or is about to refuse) writes, or None."""
        if not self.persistence_ok:
            return "persistence failing"
        if self.limit and self.share() >= threshold:
            return "maxmemory reached"
        return None

    def queueing_refused(self, headroom_percent: float) -> str | None:
        """Why queueing must stop now (kept HEADROOM_PERCENT of maxmemory for workers), or None."""
        refused = self.refusing(1.0)
        if refused is not None:
            return refused
        if self.limit and self.share() >= 1 - headroom_percent / 100:
            return f"{self.share():.0%} of maxmemory used, the last {headroom_percent:g}% kept for workers"
        return None


def read(client: redis.Redis) -> Storage:
    """INFO memory and persistence in one round trip. Raises redis.RedisError."""
    with client.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.info("persistence")
        memory, persistence = pipe.execute()
    return Storage(
        used=int(memory.get("used_memory") or 0),
        limit=int(memory.get("maxmemory") or 0),
        aof_ok=persistence.get("aof_last_write_status", "ok") == "ok",
        rdb_ok=persistence.get("rdb_last_bgsave_status", "ok") == "ok",
    )


class Capacity:
    """One process's cached view of Redis's room, refreshed at most every INTERVAL seconds."""

    def __init__(self, client: redis.Redis, url: str, headroom_percent: float, interval: float = 1.0) -> None:
        self.client = client
        self.url = url
        self.headroom = headroom_percent
        self.interval = interval
        self._lock = threading.Lock()
        self._state: Storage | None = None
        self._read_at = float("-inf")

    def state(self, fresh: bool = False) -> Storage | None:
        """The last reading, refreshed if older than the interval (or FRESH); None if Redis did not answer."""
        now = time.monotonic()
        with self._lock:
            if not fresh and now - self._read_at < self.interval:
                return self._state
            self._read_at = now
        try:
            found: Storage | None = read(self.client)
        except redis.RedisError:
            found = None
        with self._lock:
            self._state = found
        return found

    def cached(self) -> Storage | None:
        """The last reading, without asking Redis (for the worker's event loop)."""
        return self._state

    def check_queueing(self) -> None:
        """Raise QueueFull when queueing must stop; Redis unreachable is left to the write itself."""
        state = self.state()
        why = state.queueing_refused(self.headroom) if state is not None else None
        if why is not None:
            # Only a reading that lets mail in is trusted for a second: a
            # refusal is checked again, so queueing resumes as soon as there is room.
            state = self.state(fresh=True)
            why = state.queueing_refused(self.headroom) if state is not None else None
        if why is not None:
            raise QueueFull(
                f"the queue's storage is full: Redis at {safe_url(self.url)} refuses new mail ({why})"
            )
