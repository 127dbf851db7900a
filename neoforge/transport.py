"""kombu's Redis transport, with one client object per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool
for every publish, acknowledgement and event (``Channel.conn_or_acquire`` in
kombu/transport/redis.py), and redis-py's constructor copies its table of
response callbacks each time: about 8% of a worker's CPU per email, measured
with py-spy on bench/. A ``redis.Redis`` is safe to share between threads (each
command borrows a connection from the pool), so this channel builds it once.
Everything else — queues, acknowledgements, visibility timeout, restore — is
kombu's own.

Selected by ``broker_transport`` in celeryconfig.py; the URL stays ``redis://``
(or ``rediss://``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
