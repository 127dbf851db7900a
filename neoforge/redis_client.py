"""Redis clients for our own keys, with the timeouts and TLS checks every process uses."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from neoforge.errors import QueueFull, QueueUnavailable
from neoforge.settings import Settings, get_settings

__all__ = ["celery_urls", "connect", "safe_url", "storage_full", "unavailable", "unreachable_line", "where"]

_TIMEOUTS = {"socket_connect_timeout": 5, "socket_timeout": 10}


def connect(settings: Settings) -> redis.Redis:
    """A new client for our keys, safe to share between threads (each command borrows a pooled
    connection). With Sentinels, a client of the current primary that finds the new one after a
    failover (redis-py's ``Sentinel.master_for``)."""
    url, ca_file = settings.redis_url, settings.redis_tls_ca_file
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30, **_TIMEOUTS}
    if url.startswith("rediss://"):
        # redis-py checks certificates for rediss:// by default; say so anyway.
        options |= {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca_file) if ca_file else None}
    if not settings.redis_sentinels:
        return redis.Redis.from_url(url, **options)
    parts = urlsplit(url)
    if parts.scheme == "rediss":
        options["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinels, sentinel_kwargs=_sentinel_kwargs(settings), **_TIMEOUTS
    )
    database = int(parts.path.strip("/") or 0)
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, db=database, username=parts.username or None,
        password=parts.password, **options,
    )  # fmt: skip
    return client


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    password = settings.redis_sentinel_password
    return {**_TIMEOUTS, **({"password": password.get_secret_value()} if password else {})}


def celery_urls(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL (also its result backend's) and the transport options Sentinel adds.

    Without Sentinels: REDIS_URL and nothing. With them, kombu's and Celery's own Sentinel
    support (``sentinel://`` URLs separated by ``;``, ``master_name`` and ``sentinel_kwargs``
    in the transport options): the broker, the result backend and Flower follow a failover.
    """
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    parts = urlsplit(settings.redis_url)
    auth = ""
    if parts.password is not None:
        auth = f"{quote(parts.username or '', safe='')}:{quote(parts.password, safe='')}@"
    database = parts.path.strip("/") or "0"
    url = ";".join(f"sentinel://{auth}{host}:{port}/{database}" for host, port in settings.redis_sentinels)
    return url, {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": _sentinel_kwargs(settings)}


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


def unreachable_line(settings: Settings, exc: BaseException) -> str:
    """The one line a process prints when it cannot start for want of Redis: it names the setting."""
    setting = "REDIS_SENTINELS" if settings.redis_sentinels else "REDIS_URL"
    return (
        f"neoforge: cannot reach Redis at {where(settings)} ({type(exc).__name__}); "
        f"start Redis or set {setting} to where it runs"
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
        return QueueFull(f"the queue's storage is full: Redis at {where(get_settings())} "
                         f"refuses writes ({why})")  # fmt: skip
    return QueueUnavailable(f"cannot reach Redis at {where(get_settings())}: {type(exc).__name__}")


def where(settings: Settings) -> str:
    """The configured Redis, for messages: REDIS_URL (password hidden), or the Sentinels asked."""
    if not settings.redis_sentinels:
        return safe_url(settings.redis_url)
    sentinels = ",".join(f"{host}:{port}" for host, port in settings.redis_sentinels)
    return f"the primary {settings.redis_sentinel_master!r} of the Sentinels {sentinels}"
