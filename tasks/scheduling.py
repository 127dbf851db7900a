"""A worker bootstep that runs the scheduler thread (neoforge/scheduler.py) in every worker."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from neoforge.scheduler import Scheduler

__all__ = ["SchedulerStep"]


def _publish(email_id: str, queue: str) -> None:
    from tasks.email import send_email

    send_email.apply_async((email_id,), queue=queue)


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
