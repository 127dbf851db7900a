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
    """The worker's scheduler: started with the worker, stopped (or terminated) with it.

    Built by ``create``, so Celery's own start, stop and terminate reach it
    (celery/bootsteps.py, StartStopStep acts on ``obj``).
    """

    def create(self, worker: Any) -> Scheduler:
        return Scheduler(_publish, hostname=worker.hostname)
