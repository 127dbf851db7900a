"""Drain scenarios: queue N emails with no worker, then time a worker emptying the queue.

Deliveries are counted at the SMTP sink, so an email counts only once the
server has accepted it. The same run measures Redis memory per queued email
(the queue is full and no worker has touched it yet) and the enqueue rate of
``.delay()`` from application code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuSample
from bench.emails import email
from bench.profile import PySpy
from bench.sinklimit import measure
from bench.stack import Stack, System

__all__ = ["DrainResult", "drain"]

_POLL = 0.02
_STALL = 60.0  # seconds without a delivery before the run is declared stuck
_PROFILE_SECONDS = 5
_SETTLE = 1.5  # seconds for the append-only file's once-a-second fsync to empty its buffer


@dataclass
class DrainResult:
    """What one drain run measured."""

    system: System
    emails: int
    enqueue_seconds: float
    enqueue_rate: float
    redis_bytes_per_email: float
    redis_dataset_bytes_per_email: float
    first_delivery_after: float  # seconds from worker start
    seconds: float  # worker start to the Nth delivery
    rate: float  # emails / seconds
    steady_rate: float  # (emails - 1) / (Nth delivery - first delivery)
    extra_deliveries: int  # deliveries past N once the worker stopped: duplicates
    cpu: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] | None = None  # py-spy summary of our first worker (--profile)
    sink_limit: dict[str, Any] | None = None  # bench/sinklimit.py's run against this drain's server

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return asdict(self)


def _enqueue(system: System, count: int) -> None:
    # Imported here: the Celery apps read their configuration (and so the
    # run's Redis URL) when first used, after Stack.configure_this_process().
    if system == "ours":
        from tasks import send_email
    else:
        from bench.baseline import send_email
    for number in range(count):
        send_email.delay(**email(number))


def _memory(stack: Stack) -> tuple[int, int]:
    client = stack.redis()
    info = client.info("memory")
    client.close()
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def drain(
    stack: Stack,
    system: System,
    count: int,
    delay: float | None = None,
    enqueue: Callable[[int], None] | None = None,
    profile: Path | None = None,
    limit_connections: int = 0,
) -> DrainResult:
    """Queue COUNT emails, start SYSTEM's worker, and time it until the sink has them all.

    With DELAY, the worker talks to the sink through the slow proxy, whose
    every reply comes DELAY seconds late. ENQUEUE(count), if given, queues the
    emails instead of one ``.delay()`` each (the bulk scenario). With PROFILE
    (a file for py-spy's raw samples), our first worker is recorded for a few
    seconds from its first delivery. With LIMIT_CONNECTIONS, the server's own
    limit over that many reused connections is measured first (bench/sinklimit.py).
    """
    stack.flush()
    sink = stack.start_sink()
    groups = {"redis": stack.redis_pid, "sink": sink.pid}
    smtp_port = sink.port
    proxy_pid = None
    if delay is not None:
        proxy, smtp_port = stack.start_proxy(sink.port, delay)
        proxy_pid = groups["proxy"] = proxy.pid
    limit = None
    try:
        if limit_connections:
            limit = measure(smtp_port, limit_connections).as_dict()
        base = sink.count()  # the limit run's messages

        def delivered() -> int:
            return sink.count() - base

        time.sleep(_SETTLE)
        memory_before = _memory(stack)
        started = time.perf_counter()
        if enqueue is None:
            _enqueue(system, count)
        else:
            enqueue(count)
        enqueue_seconds = time.perf_counter() - started
        time.sleep(_SETTLE)
        memory_after = _memory(stack)

        before = CpuSample.take(groups)
        t0 = time.monotonic()
        workers = stack.start_workers(system, smtp_port)
        groups |= stack.worker_groups(workers)
        recording: list[PySpy] = []

        def record() -> None:
            if profile is not None and system == "ours":
                recording.append(PySpy(workers[0].pid, _PROFILE_SECONDS, profile))

        first, last = _wait_for(delivered, count, t0, on_first=record)
        # The baseline's main process consumes and dispatches; its pool processes send.
        after = CpuSample.take(groups, {"worker:main": workers[0].pid} if system != "ours" else {})
        # (py-spy's few seconds may outlast the drain: the worker idles, few samples.)
        summary = recording[0].finish().as_dict() if recording else None
        stack.stop_workers(workers)
        # A message delivered twice would show up as one more at the sink.
        time.sleep(0.5)
        extra = delivered() - count
    finally:
        if proxy_pid is not None:
            stack.stop(proxy_pid)
        stack.stop(sink.pid)
    seconds = last - t0
    return DrainResult(
        system=system,
        emails=count,
        enqueue_seconds=round(enqueue_seconds, 3),
        enqueue_rate=round(count / enqueue_seconds, 1),
        redis_bytes_per_email=round((memory_after[0] - memory_before[0]) / count, 1),
        redis_dataset_bytes_per_email=round((memory_after[1] - memory_before[1]) / count, 1),
        first_delivery_after=round(first - t0, 3),
        seconds=round(seconds, 3),
        rate=round(count / seconds, 2),
        steady_rate=round((count - 1) / (last - first), 2) if last > first else 0.0,
        extra_deliveries=extra,
        cpu=after.since(before) | {"wall": round(seconds, 2)},
        profile=summary,
        sink_limit=limit,
    )


def _wait_for(
    count: Callable[[], int], wanted: int, t0: float, on_first: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Poll COUNT() until it reaches WANTED; return when the first and the last one arrived."""
    first = 0.0
    seen, progress_at = 0, t0
    while True:
        now = time.monotonic()
        current = count()
        if current and not first:
            first = now
            if on_first is not None:
                on_first()
        if current >= wanted:
            return first, now
        if current > seen:
            seen, progress_at = current, now
        elif now - progress_at > _STALL:
            raise TimeoutError(f"no delivery for {_STALL:.0f} s: the sink has {current} of {wanted}")
        time.sleep(_POLL)
