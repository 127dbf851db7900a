"""Celery's Redis result backend, minus one pub/sub subscription per published task."""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

__all__ = ["QuietRedisBackend"]


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """Stores results like RedisBackend; publishing does not subscribe to the result.

    The stock backend subscribes to a task's result channel whenever the task
    is published (celery/backends/redis.py, ``on_task_call``), so that a later
    ``.get()`` is fast. Our callers never wait on results (statuses live in
    our own records), and in a long-running API process those subscriptions
    pile up until Redis drops the connection for overflowing its pub/sub
    buffer. ``AsyncResult.get()`` still works: it subscribes when called.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None
