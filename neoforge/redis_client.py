"""One Redis client per process and URL, created on first use (never at import)."""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from neoforge.settings import get_settings

__all__ = ["get_redis", "safe_url"]

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}


def get_redis(url: str) -> redis.Redis:
    """A client for URL, shared by the threads of this process; a forked child gets its own."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(url, **_options(url))
                _clients[key] = client
    return client


def _options(url: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "health_check_interval": 30,
    }
    if url.startswith("rediss://"):
        # redis-py checks certificates for rediss:// by default; say so anyway.
        ca_file = get_settings().redis_tls_ca_file
        options |= {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca_file) if ca_file else None}
    return options


def close_all() -> None:
    """Close this process's clients (at shutdown)."""
    with _lock:
        for (pid, _), client in list(_clients.items()):
            if pid == os.getpid():
                client.close()
        _clients.clear()


def safe_url(url: str) -> str:
    """URL with any password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
