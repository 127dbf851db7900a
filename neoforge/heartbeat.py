"""A sending process's heartbeat in Redis: while it beats, the leases the process holds hold.

The key ``alive:host|pid`` is set with an expiry of EMAIL_HEARTBEAT_TIMEOUT
seconds, renewed five times per period by a thread of the process (and by
every lease it takes, lua/begin.lua). Redis expires it, so whether a holder
is alive is judged by Redis's clock, on any host, without sharing a PID
namespace: a process killed, stopped (SIGSTOP) or cut off from Redis stops
renewing it, and another sender takes its leases over (its fence stops its
late writes: neoforge/store/fencing.py).
"""

from __future__ import annotations

import logging
import threading

import redis

from neoforge.logs import log_event
from neoforge.store.keys import ALIVE
from neoforge.store.ledger import process_name

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews this process's heartbeat from a daemon thread, from ``ensure()`` until ``stop()``."""

    def __init__(self, client: redis.Redis, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Start beating (once per process; a forked child starts its own)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="neoforge-heartbeat", daemon=True)
                self._thread.start()

    def beat(self) -> None:
        """Say once that this process is alive, for the next ``timeout`` seconds."""
        self.client.set(ALIVE + process_name(), "1", px=int(self.timeout * 1000))

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:
                # Missed beats are what the lease's takeover is for; keep trying.
                log_event(logger, "heartbeat.unavailable", logging.WARNING, reason=type(exc).__name__)
            if self._stop.wait(self.timeout / 5):
                return

    def stop(self) -> None:
        """Stop beating (the key then lapses; the leases of attempts still running stay until then)."""
        self._stop.set()
