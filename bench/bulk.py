"""Bulk scenarios: (c) a bulk send drained to the sink, (d) transactional latency behind a bulk backlog.

(c) reuses the drain machinery (bench/drain.py) with ``queue_bulk`` as the
enqueue step. (d) queues a bulk backlog, starts our worker, waits for its first
delivery, then sends one transactional email every INTERVAL seconds while the
backlog drains and measures each one's enqueue → accepted-by-the-sink time.

smtp-sink (run with ``-c``) only counts messages, so (d) cannot match one at
the sink: each latency is our status record's ``sent_at`` (written by the
worker once the server accepted the message) minus its ``created_ts``
(written when it was queued), both from ``neoforge:email:{id}``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.cpu import CpuSample
from bench.drain import DrainResult, drain
from bench.emails import email
from bench.stack import Stack

__all__ = ["BULK_CHUNK", "LatencyResult", "bulk_drain", "latency_under_backlog", "queue_bulk_recipients"]

BULK_CHUNK = 10_000  # recipients per queue_bulk call, its limit
_SUBJECT = "Bench bulk send"
_WAIT = 120.0  # seconds the transactional emails may take to be sent, after the last is queued
_POLL = 0.05


def queue_bulk_recipients(count: int) -> list[str]:
    """Queue COUNT test_email recipients with ``queue_bulk``, BULK_CHUNK per call; return the ids."""
    from neoforge.bulk import queue_bulk

    ids: list[str] = []
    for start in range(0, count, BULK_CHUNK):
        recipients = [
            {"to": f"bulk{n}@example.com", "context": {"name": f"Bulk {n}"}}
            for n in range(start, min(count, start + BULK_CHUNK))
        ]
        _, chunk = queue_bulk(
            {"template": "test_email", "subject": _SUBJECT, "recipients": recipients, "priority": "bulk"}
        )
        ids += chunk
    return ids


def bulk_drain(
    stack: Stack, count: int, delay: float | None = None, profile: Path | None = None,
    limit_connections: int = 0,
) -> DrainResult:  # fmt: skip
    """(c) and (g) for ours: COUNT recipients queued with ``queue_bulk``, drained by the default workers.

    With DELAY, through the slow proxy; with PROFILE, recorded by py-spy; with
    LIMIT_CONNECTIONS, the server's own limit measured first (see ``drain``).
    """
    return drain(stack, "ours", count, delay, enqueue=queue_bulk_recipients, profile=profile,
                 limit_connections=limit_connections)  # fmt: skip


@dataclass
class LatencyResult:
    """What one run of (d) measured."""

    backlog: int
    emails: int
    interval: float
    first_delivery_after: float  # seconds from worker start to the first delivery (of the backlog)
    backlog_left_at_last_send: int  # emails (of both kinds) not yet at the sink when the last was queued
    backlog_left_at_end: int  # ... once every transactional one was sent
    p50_ms: float
    p99_ms: float
    max_ms: float
    latencies_ms: list[float]
    cpu: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return asdict(self)


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of VALUES (share in 0..1)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_under_backlog(stack: Stack, backlog: int, count: int, interval: float) -> LatencyResult:
    """(d): BACKLOG bulk emails queued, our worker started, then COUNT transactional ones, INTERVAL apart."""
    from tasks import send_email

    stack.flush()
    sink = stack.start_sink()
    groups = {"redis": stack.redis_pid, "sink": sink.pid}
    client = stack.redis(0)
    try:
        queue_bulk_recipients(backlog)
        t0 = time.monotonic()
        workers = stack.start_workers("ours", sink.port)
        groups |= stack.worker_groups(workers)
        while sink.count() == 0:
            if time.monotonic() - t0 > 60:
                raise TimeoutError("our worker delivered nothing within 60 s")
            time.sleep(0.01)
        first = time.monotonic() - t0
        before = CpuSample.take(groups)
        started = time.monotonic()
        ids = []
        for number in range(count):
            # One every INTERVAL from the start, whatever each .delay() took.
            pause = started + number * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            fields = email(number) | {"subject": f"Transactional #{number}"}
            ids.append(send_email.delay(**fields, priority="transactional").id)
        left_at_last_send = backlog + count - sink.count()
        deadline = time.monotonic() + _WAIT
        pending = set(ids)
        while pending:
            with client.pipeline(transaction=False) as pipe:
                for email_id in pending:
                    pipe.hget(f"neoforge:email:{email_id}", "status")
                statuses = dict(zip(pending, pipe.execute(), strict=True))
            failed = {i: s for i, s in statuses.items() if s not in (None, "queued", "sending", "sent")}
            if failed:
                raise RuntimeError(f"transactional emails not sent: {failed}")
            pending = {i for i, s in statuses.items() if s != "sent"}
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(pending)} transactional emails not sent {_WAIT:.0f} s after the last"
                )
            time.sleep(_POLL)
        wall = time.monotonic() - started
        left_at_end = max(0, backlog + count - sink.count())
        after = CpuSample.take(groups)
        latencies = []
        for email_id in ids:
            created, sent = client.hmget(f"neoforge:email:{email_id}", ["created_ts", "sent_at"])
            latencies.append((datetime.fromisoformat(sent).timestamp() - float(created)) * 1000)
        stack.stop_workers(workers)
    finally:
        client.close()
        stack.stop(sink.pid)
    return LatencyResult(
        backlog=backlog,
        emails=count,
        interval=interval,
        first_delivery_after=round(first, 3),
        backlog_left_at_last_send=left_at_last_send,
        backlog_left_at_end=left_at_end,
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=round(_percentile(latencies, 0.99), 2),
        max_ms=round(max(latencies), 2),
        latencies_ms=[round(value, 2) for value in latencies],
        cpu=after.since(before) | {"wall": round(wall, 2)},
    )
