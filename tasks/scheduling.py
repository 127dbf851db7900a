"""A worker bootstep that runs the scheduler thread (neoforge/scheduler.py) in every worker."""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import worker_shutdown

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
        scheduler = Scheduler(_publish, hostname=worker.hostname)

        def stop_with_worker(sender: Any = None, **_: Any) -> None:
            # Celery's blueprint skips stopping its steps when the worker stops before every
            # step started (celery/bootsteps.py, Blueprint.stop: "Not fully started"), which
            # left this thread running, and logging, after its worker and Redis were gone.
            # The worker still sends worker_shutdown on every warm stop.
            if sender is worker:
                worker_shutdown.disconnect(stop_with_worker)
                scheduler.stop()

        worker_shutdown.connect(stop_with_worker, weak=False)
        return scheduler
