"""Opt-in worker inside the API process (``EMBEDDED_WORKER=true``), for single-process deployments.

Limits: one solo worker thread shares the API process: a
slow SMTP server slows nothing in the API (the worker has its own thread and
event loop), but deliveries stop when the API stops, there is no process
isolation (a crash takes both down), and it cannot scale. Run
``celery -A tasks worker`` for anything beyond one small process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from neoforge.logs import log_event
from neoforge.runtime import close as close_runtime
from tasks import app

__all__ = ["EmbeddedWorker"]

logger = logging.getLogger(__name__)


class EmbeddedWorker:
    """A Celery worker (solo pool) on a thread of this process."""

    def __init__(self) -> None:
        self._worker: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._worker = app.WorkController(
            app=app,
            pool="solo",
            concurrency=1,
            hostname=f"embedded-{threading.get_native_id()}@%h",
            without_mingle=True,
            without_gossip=True,
        )
        self._thread = threading.Thread(target=self._worker.start, name="neoforge-worker", daemon=True)
        self._thread.start()
        log_event(logger, "worker.embedded_started")

    def stop(self) -> None:
        if self._worker is None:
            return
        self._worker.stop(in_sighandler=False)
        if self._thread is not None:
            self._thread.join(30)
        close_runtime()
        self._worker = None
        log_event(logger, "worker.embedded_stopped")
