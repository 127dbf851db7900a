"""Redis clients for our own keys, with the timeouts and TLS checks every process uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from neoforge.errors import QueueFull, QueueUnavailable
from neoforge.settings import get_settings

__all__ = ["connect", "safe_url", "storage_full", "unavailable", "unreachable_line"]


def connect(url: str, ca_file: Path | None = None) -> redis.Redis:
    """A new client for URL, safe to share between threads (each command borrows a pooled connection)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
        "health_check_interval": 30,
    }
    if url.startswith("rediss://"):
        # redis-py checks certificates for rediss:// by default; say so anyway.
        options |= {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca_file) if ca_file else None}
    return redis.Redis.from_url(url, **options)


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


def unreachable_line(url: str, exc: BaseException) -> str:
    """The one line a process prints when it cannot start for want of Redis: it names REDIS_URL."""
    return (
        f"neoforge: cannot reach Redis at {safe_url(url)} ({type(exc).__name__}); "
        "start Redis or set REDIS_URL to where it runs"
    )


def storage_full(exc: BaseException) -> bool:
    """True when EXC is Redis refusing a write for want of memory (maxmemory) or of a working disk."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    # Inside a Lua script the refusal comes wrapped: "Error running script ...: -OOM command not allowed".
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and ("OOM command not allowed" in text or "MISCONF" in text)


def unavailable(exc: BaseException) -> QueueUnavailable:
    """A QueueUnavailable naming the configured Redis URL (password hidden) and the error's type.

    QueueFull when Redis answered but refused the write (maxmemory, persistence failing).
    """
    if storage_full(exc):
        why = "persistence failing" if "MISCONF" in str(exc) else "maxmemory reached"
        return QueueFull(f"the queue's storage is full: Redis at {safe_url(get_settings().redis_url)} "
                         f"refuses writes ({why})")  # fmt: skip
    return QueueUnavailable(
        f"cannot reach Redis at {safe_url(get_settings().redis_url)}: {type(exc).__name__}"
    )
