"""Emails held in Redis until they are due: scheduled sends and long retry delays.

The Redis transport redelivers any message that stays unacknowledged longer
than the visibility timeout, and a Celery countdown is held unacknowledged by
the worker until it is due: a countdown longer than the timeout would be
delivered again and again. So the broker only ever holds short delays
(``max_broker_delay``); longer ones wait in the ``neoforge:scheduled`` sorted
set, which every worker's scheduler thread sweeps, one worker at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis

from neoforge.errors import QueueUnavailable
from neoforge.logs import log_event
from neoforge.metrics import heartbeat
from neoforge.recovery import sweep_lost
from neoforge.runtime import current
from neoforge.settings import Settings
from neoforge.store import TERMINAL
from neoforge.store.keys import RECOVERY_LOCK, SCHEDULER_LOCK

__all__ = ["Scheduler", "max_broker_delay"]

logger = logging.getLogger(__name__)


def max_broker_delay(settings: Settings) -> float:
    """The longest countdown left to the broker: a fifth of the visibility timeout."""
    return settings.broker_visibility_timeout / 5


class Scheduler:
    """Publishes due emails; PUBLISH(email_id, queue, carried options as JSON) sends the message."""

    def __init__(self, publish: Callable[[str, str, str], None], hostname: str = "") -> None:
        self.publish = publish
        self.hostname = hostname
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def release_due(self) -> int:
        """Publish every due email, if no other scheduler is doing so; return how many."""
        rt = current()
        client, store = rt.redis, rt.store
        hold_ms = int(max(5.0, rt.settings.email_scheduler_interval * 5) * 1000)
        if not client.set(SCHEDULER_LOCK, self.token, nx=True, px=hold_ms):
            return 0
        released = 0
        try:
            # Due by Redis's clock: a worker whose own clock runs ahead releases nothing early.
            for email_id in store.due(store.clock()):
                found = store.release(email_id)
                if found is None or found[0] in TERMINAL:
                    store.unschedule(email_id)
                    continue
                # Publish first, then forget: a crash in between publishes it
                # twice, and the delivery ledger makes the second a no-op.
                self.publish(email_id, found[1], found[2])
                store.unschedule(email_id)
                released += 1
                log_event(logger, "email.released", id=email_id)
        finally:
            if client.get(SCHEDULER_LOCK) == self.token:
                client.delete(SCHEDULER_LOCK)
        return released

    def recover_lost(self) -> int:
        """Publish again emails whose message was lost (neoforge/recovery.py), one worker at a time."""
        rt = current()
        client = rt.redis
        visibility = rt.settings.broker_visibility_timeout
        # Kombu restores abandoned messages after the visibility timeout plus
        # one sweep: give it that chance first.
        grace = visibility + max(1, visibility // 10) + 5
        # A mutex, not a rate limit: one sweep at a time, each worker on its own clock.
        if not client.set(RECOVERY_LOCK, self.token, nx=True, px=30_000):
            return 0
        try:
            return sweep_lost(rt.store, grace, self.publish)
        finally:
            if client.get(RECOVERY_LOCK) == self.token:
                client.delete(RECOVERY_LOCK)

    def run(self) -> None:
        """Sweep until stopped; Redis being down only delays the next sweep."""
        settings = current().settings
        interval = settings.email_scheduler_interval
        recovery_every = max(1.0, settings.broker_visibility_timeout / 4)
        last_recovery = time.monotonic()
        while not self._stop.wait(interval):
            try:
                # The worker's storage gate (tasks/storage.py) reads this
                # without a round trip of its own.
                current().capacity.state()
                # Deliveries Redis would not record, recorded now if it takes writes (and at start).
                if current().journal.replay(current().store):
                    log_event(logger, "journal.replayed")
                if self.hostname:
                    heartbeat(current().redis, self.hostname)
                self.release_due()
                if time.monotonic() - last_recovery >= recovery_every:
                    last_recovery = time.monotonic()
                    self.recover_lost()
            except (redis.RedisError, OSError, QueueUnavailable) as exc:
                log_event(logger, "scheduler.unavailable", logging.WARNING, reason=type(exc).__name__)
            except Exception:
                # This thread must outlive any one bad sweep: log it whole, go on.
                logger.exception("scheduler.error")

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="neoforge-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
