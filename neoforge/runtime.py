"""What one process owns: its settings, its Redis client and status store, and (once it sends
mail) the sender loop, the SMTP connection pool and the bulk batch gate.

One ``Runtime`` per process, built on first use and closed at shutdown (the
worker's shutdown signals, the API's lifespan). A forked child (a prefork pool
process) starts with none: what it inherited belongs to its parent, whose
sockets it must not close. Changing the settings (tests do) replaces it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis

from neoforge.breaker import Breaker
from neoforge.capacity import Capacity
from neoforge.heartbeat import Heartbeat
from neoforge.journal import Journal
from neoforge.pacing import Pacer
from neoforge.providers import Providers
from neoforge.redis_client import connect
from neoforge.settings import Settings, get_settings
from neoforge.smtp.pool import Pool, bulk_connections, for_endpoint
from neoforge.store.records import StatusStore

__all__ = ["Runtime", "Sender", "close", "current"]

T = TypeVar("T")


class Sender:
    """One event loop on its own thread carrying every SMTP dialogue of the process.

    Task threads (or a prefork child's one thread) hand it coroutines, so the
    connections are shared by all tasks of the process and a slow server is
    kept busy by many dialogues at once.
    """

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        # One pool per SMTP provider (its own connections, credentials and TLS), by name.
        self.pools = {e.name: Pool(for_endpoint(settings, e)) for e in settings.endpoints()}
        self.pool = next(iter(self.pools.values()))
        self._thread = threading.Thread(target=self.loop.run_forever, name="neoforge-smtp", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start CORO on the sender loop; its future resolves when it ends."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, wait: float = 0.0) -> None:
        """Let dialogues in flight finish for up to WAIT seconds, cancel the rest, close the pool, stop.

        A cancelled dialogue's caller sees ``concurrent.futures.CancelledError``
        (never a hang); the email's ledger tells the next attempt how far it got.
        """

        async def wind_down() -> None:
            here = asyncio.current_task()
            deadline = self.loop.time() + wait
            while self.loop.time() < deadline and asyncio.all_tasks() - {here}:
                await asyncio.sleep(0.05)
            others = asyncio.all_tasks() - {here}
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for pool in self.pools.values():
                pool.close_all()
            # A few turns of the loop, so TLS connections finish closing before it stops.
            for _ in range(5):
                await asyncio.sleep(0.01)

        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            self.submit(wind_down()).result(timeout=wait + 5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class Runtime:
    """The per-process state; ``current()`` gives this process's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: redis.Redis = connect(settings)
        self.store = StatusStore(self.redis, settings.email_status_ttl)
        self.breaker = Breaker(self.redis, self.store.scripts, settings)
        self.providers = Providers(self.redis, self.store.scripts, settings)
        self.pacer = Pacer(self.redis, self.store.scripts, settings)
        self.dkim_key = settings.dkim_key  # read once; checked with the settings
        self.capacity = Capacity(self.redis, settings.redis_url, settings.redis_memory_headroom)
        self.journal = Journal(settings.email_journal_dir, settings.redis_url)
        # Started by the first lease this process takes (neoforge/attempt.py).
        self.heartbeat = Heartbeat(self.redis, settings.email_heartbeat_timeout)
        # Bulk batches at once per process: enough to keep bulk mail's share of
        # the SMTP connections busy while some batches finish (twice what it
        # holds), never more than half the threads, so the others are always
        # free for transactional mail (which also keeps a fifth of the
        # connections). A batch finding the gate full waits in Celery's timer,
        # not in a thread (tasks/batch.py).
        threads = (settings.worker_concurrency or 32) if settings.worker_pool == "threads" else 1
        wanted = 2 * bulk_connections(settings) // settings.email_bulk_batch_size
        self.batch_gate = threading.BoundedSemaphore(max(1, min(threads // 2, wanted)))
        self._sender: Sender | None = None
        self._lock = threading.Lock()

    @property
    def sender(self) -> Sender:
        """The sender loop, started the first time this process sends."""
        with self._lock:
            if self._sender is None:
                self._sender = Sender(self.settings)
            return self._sender

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run CORO on the sender loop and wait for its result."""
        return self.sender.submit(coro).result()

    def close(self, wait: float = 0.0) -> None:
        """Stop the sender (see ``Sender.close``) and close the Redis client."""
        self.retire(wait)
        self.redis.close()

    def retire(self, wait: float = 0.0) -> None:
        """Stop the sender only: a thread may still hold this runtime and use its Redis client,
        whose connections close when the last reference goes (closing them now would cut a
        command in flight)."""
        self.heartbeat.stop()
        with self._lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            sender.close(wait)


_current: Runtime | None = None
_lock = threading.Lock()


def current() -> Runtime:
    """This process's runtime, for the settings in force."""
    global _current
    settings = get_settings()
    found = _current
    if found is not None and found.settings is settings:
        return found
    with _lock:
        if _current is None or _current.settings is not settings:
            if _current is not None:
                # Retired, not cut off: a task may still be mid-dialogue on it.
                old = _current
                threading.Thread(target=old.retire, args=(60.0,), name="neoforge-retire", daemon=True).start()
            _current = Runtime(settings)
        return _current


def close() -> None:
    """Close this process's runtime (at shutdown); the next ``current()`` builds a new one."""
    global _current
    with _lock:
        found, _current = _current, None
    if found is not None:
        found.close()


def _forget_after_fork() -> None:
    # The child must not close or use its parent's loop thread (absent in the
    # child) or sockets: drop the reference, build anew on first use.
    global _current, _lock
    _current = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
