"""The Celery application, configured from celeryconfig.py, and its process signals."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import redis
from celery import Celery
from celery.signals import (
    setup_logging,
    task_revoked,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from neoforge import runtime
from neoforge.enqueue import record_expired
from neoforge.logs import configure_logging, log_event
from neoforge.redis_client import connect, unreachable_line
from neoforge.settings import get_settings
from neoforge.smtp.probe import Check, check_smtp

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = Celery("neoforge")
app.config_from_object("celeryconfig")


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Our handler and format for the worker process, instead of Celery's.
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@worker_init.connect
def _check_redis(**_: Any) -> None:
    # One line naming REDIS_URL and a non-zero exit, rather than Celery retrying the broker
    # 100 times with a traceback each. SystemExit passes Celery's signal dispatch (it catches
    # Exception only). A Redis lost later is retried by Celery as usual.
    settings = get_settings()
    client = connect(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(unreachable_line(settings, exc)) from None
    finally:
        client.close()


@worker_ready.connect
def _check_smtp(**_: Any) -> None:
    # Say at once whether the SMTP server takes our login, on a thread: a slow
    # or unreachable server must not hold up (or break) the worker's start.
    threading.Thread(target=_log_smtp_check, name="neoforge-smtp-check", daemon=True).start()


async def _check_in_slot(rt: runtime.Runtime) -> Check:
    async with rt.sender.pool.slots:
        return await check_smtp(rt.settings)


def _log_smtp_check() -> None:
    """Check the SMTP server and log ``smtp.check`` with the one line (INFO when ok, ERROR if not)."""
    # On the sender loop, holding a connection slot like any dialogue: the
    # check never takes the process past SMTP_MAX_CONNECTIONS.
    rt = runtime.current()
    result = rt.run(_check_in_slot(rt))
    log_event(logger, "smtp.check", logging.INFO if result.ok else logging.ERROR, result=result.line)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    # Pooled SMTP connections end with a clean close, not a dropped socket.
    runtime.close()


@task_revoked.connect
def _revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    # Celery drops a message whose `expires` has passed without running the
    # task. Our own queueing turns `expires` into the email's expires_at, so
    # this is a client that published by name: record the email as expired.
    if not expired or request is None or getattr(request, "name", "") != "neoforge.send_email":
        return
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") or ""
    if record_expired(runtime.current().store, request.id, queue, socket.gethostname()):
        log_event(logger, "email.expired", id=request.id, status="expired")
