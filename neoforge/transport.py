"""kombu's Redis transport, with one client object per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool
for every publish, acknowledgement and event (``Channel.conn_or_acquire`` in
kombu/transport/redis.py), and redis-py's constructor copies its table of
response callbacks each time: about 8% of a worker's CPU per email, measured
with py-spy on bench/. A ``redis.Redis`` is safe to share between threads (each
command borrows a connection from the pool), so this channel builds it once.
Everything else — queues, acknowledgements, visibility timeout, restore — is
kombu's own.

It can also hand a message back instead of pushing it (``capture``): queueing
an email then writes its record and pushes its message in one Lua script, one
round trip, all or nothing (neoforge/store.py ``_CREATE``).

Selected by ``broker_transport`` in celeryconfig.py; the URL stays ``redis://``
(or ``rediss://``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

__all__ = ["Channel", "Transport", "capture"]

_capturing = threading.local()


@contextmanager
def capture() -> Iterator[list[tuple[str, str]]]:
    """Within this block, messages this thread publishes are collected, not pushed.

    Each is ``(list key, serialized message)``: exactly what kombu would LPUSH.
    """
    collected: list[tuple[str, str]] = []
    _capturing.messages = collected
    try:
        yield collected
    finally:
        _capturing.messages = None


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses one client object for its commands."""

    _shared_client: Any = None
    _shared_pid = 0

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        # Built anew in a forked child, whose pool is its own.
        if self._shared_client is None or self._shared_pid != os.getpid():
            self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
            self._shared_pid = os.getpid()
        yield self._shared_client

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        collected = getattr(_capturing, "messages", None)
        if collected is None:
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
            return
        # What kombu's Redis channel would push (kombu/transport/redis.py, _put).
        priority = self._get_message_priority(message, reverse=False)  # type: ignore[no-untyped-call]
        key = self._q_for_pri(queue, priority)  # type: ignore[no-untyped-call]
        collected.append((key, dumps(message)))  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
