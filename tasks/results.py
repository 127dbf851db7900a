"""Celery's Redis result backend, without a pub/sub subscription for every task published."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.backends.redis import RedisBackend, SentinelBackend

from neoforge.logs import log_event
from neoforge.redis_client import storage_full

__all__ = ["QuietRedisBackend", "QuietSentinelBackend"]

logger = logging.getLogger(__name__)


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """RedisBackend, but publishing a task does not subscribe to its result, and a full Redis
    does not fail the task.

    The stock backend subscribes to a task's result channel whenever the task
    is published (``on_task_call``, celery/backends/redis.py), so that a later
    ``.get()`` is fast. In a long-running API process that never waits on
    results, those subscriptions pile up until Redis drops the connection for
    overflowing its pub/sub buffer. ``AsyncResult.get()`` still works: it
    subscribes when called, then reads the stored result in case it is there
    already (``on_wait_for_pending``).
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def set(self, key: str, value: Any, expires: Any = None, **retry_policy: Any) -> Any:
        # Redis refusing the result for want of memory or disk must not turn a
        # delivered email into a failed task whose message is never
        # acknowledged (that stalls the worker's prefetch window): the email's
        # own record says how it ended; only AsyncResult.get() misses it.
        try:
            return super().set(key, value, expires, **retry_policy)
        except redis.ResponseError as exc:
            if not storage_full(exc):
                raise
            log_event(logger, "result.unstored", logging.WARNING, key=key, reason="storage full")
            return None


class QuietSentinelBackend(QuietRedisBackend, SentinelBackend):  # type: ignore[misc]
    """Celery's Sentinel backend (it follows a failover), quiet and tolerant as above."""
