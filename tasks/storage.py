"""A consumer bootstep that stops taking new messages while Redis refuses writes, and resumes.

Redis at ``maxmemory`` still hands out a message (BRPOP frees memory) but then
refuses kombu's write that records it as unacknowledged; with persistence
failing (MISCONF) it refuses every write. Either way there is no point taking
new mail: the worker stops consuming its queues (as Celery's ``cancel_consumer``
control command does) while emails in hand finish, and consumes again once
Redis has room and a working disk. The reading comes from the process's
capacity cache (neoforge/capacity.py), refreshed every second by the scheduler
thread, so the event loop never waits on Redis here.

A refused write that still reaches kombu (before this step noticed) is a
channel error, which ``broker_channel_error_retry`` (celeryconfig.py) turns
into a reconnect instead of the end of the worker.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from neoforge.capacity import RESUME_BELOW
from neoforge.logs import log_event
from neoforge.runtime import current

__all__ = ["StorageGate"]

logger = logging.getLogger(__name__)


class StorageGate(bootsteps.StartStopStep):  # type: ignore[misc]
    """Pauses the task consumer while Redis refuses writes; resumes it when they succeed again."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.paused: list[Any] = []
        self.tref: Any = None

    def start(self, c: Any) -> None:
        # A (re)started consumer consumes every queue again: nothing is paused.
        self.paused = []
        self.tref = c.timer.call_repeatedly(1.0, self.check, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def check(self, c: Any) -> None:
        """Pause or resume the task consumer by the last reading of Redis's state."""
        consumer = c.task_consumer
        state = current().capacity.cached()
        if consumer is None or state is None:
            return
        if not self.paused:
            why = state.refusing()
            if why is not None:
                self.paused = list(consumer.queues)
                for queue in self.paused:
                    consumer.cancel_by_queue(queue.name)
                log_event(logger, "worker.paused", logging.WARNING, reason=why,
                          queues=",".join(q.name for q in self.paused))  # fmt: skip
        elif state.refusing(RESUME_BELOW) is None:
            for queue in self.paused:
                consumer.add_queue(queue)
            consumer.consume()
            log_event(logger, "worker.resumed", queues=",".join(q.name for q in self.paused))
            self.paused = []
