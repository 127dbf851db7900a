"""Celery's Redis result backend, without a pub/sub subscription for every task published."""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend

__all__ = ["QuietRedisBackend", "QuietSentinelBackend"]


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """RedisBackend, but publishing a task does not subscribe to its result.

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


class QuietSentinelBackend(SentinelBackend):  # type: ignore[misc]
    """Celery's Sentinel backend (it follows a failover), quiet on publish as above."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None
