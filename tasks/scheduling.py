"""A worker bootstep that runs the scheduler thread (neoforge/scheduler.py) in every worker."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from neoforge.scheduler import Scheduler
from tasks.email import send_email

__all__ = ["SchedulerStep"]


def _publish(email_id: str, queue: str, carried: str) -> None:
    send_email.publish(email_id, queue=queue or None, carried=carried)


class SchedulerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Start the scheduler with the worker, stop it with the worker."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.scheduler: Scheduler | None = None

    def start(self, worker: Any) -> None:
        self.scheduler = Scheduler(_publish, hostname=worker.hostname)
        self.scheduler.start()

    def stop(self, worker: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
