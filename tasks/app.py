"""The Celery application, configured from celeryconfig.py."""

from __future__ import annotations

from typing import Any

import kombu.pools
from celery import Celery
from celery.signals import setup_logging, worker_process_shutdown, worker_shutdown

from neoforge.delivery import close_connections
from neoforge.logs import configure_logging
from neoforge.settings import get_settings
from tasks.scheduling import SchedulerStep

__all__ = ["app", "close_broker_connections"]

app = Celery("neoforge")
app.config_from_object("celeryconfig")
app.steps["worker"].add(SchedulerStep)


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Our handler and format for the worker process, instead of Celery's.
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    # Pooled SMTP connections end with a clean close, not a dropped socket.
    close_connections()


def close_broker_connections() -> None:
    """Close this process's broker connections; the next publish opens new ones."""
    app.pool.force_close_all()
    # Forget the closed pools, kombu's process-wide producer pools included,
    # the way Celery does after a fork (celery/app/base.py, _after_fork), so a
    # restarted lifespan in the same process can publish again.
    kombu.pools.reset()
    app._after_fork()
