"""The overview: queues, workers and dead letters (the Prometheus gauges), and the last hour per minute."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from prometheus_client.parser import text_string_to_metric_families

from neoforge.metrics import QUEUES, render
from neoforge.store.keys import minute_key

__all__ = ["KINDS", "Overview", "chart", "overview"]

KINDS = ("sent", "failed", "retried")
_MINUTES = 60


@dataclass
class Overview:
    """What the overview page shows; per queue: waiting, taken by workers, oldest waiting (seconds)."""

    waiting: dict[str, float] = field(default_factory=dict)
    taken: dict[str, float] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    scheduled: int = 0
    dead_letters: int = 0
    workers: int = 0
    paused: str = ""
    series: dict[str, list[int]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        return {kind: sum(values) for kind, values in self.series.items()}


_GAUGES = {
    "neoforge_queue_waiting": "waiting",
    "neoforge_queue_unacked": "taken",
    "neoforge_oldest_waiting_seconds": "oldest",
}


def overview(client: redis.Redis) -> Overview:
    """Read once: the same figures Prometheus scrapes (neoforge.metrics), plus the per-minute counts."""
    found = Overview()
    # The metrics module is the one reader of kombu's storage: reuse its figures as it exposes them.
    for family in text_string_to_metric_families(render(client).decode()):
        for sample in family.samples:
            target = _GAUGES.get(sample.name)
            if target is not None:
                getattr(found, target)[sample.labels["queue"]] = sample.value
            elif sample.name == "neoforge_scheduled_emails":
                found.scheduled = int(sample.value)
            elif sample.name == "neoforge_dead_letters":
                found.dead_letters = int(sample.value)
            elif sample.name == "neoforge_workers_online":
                found.workers = int(sample.value)
            elif sample.name == "neoforge_sending_paused" and sample.value:
                found.paused = sample.labels["error_class"]
    found.series = per_minute(client)
    return found


def per_minute(client: redis.Redis, now: float | None = None) -> dict[str, list[int]]:
    """Sent, failed and retried in each of the last 60 minutes, oldest first (this minute last)."""
    this_minute = int((now or time.time()) // 60)
    minutes = range(this_minute - _MINUTES + 1, this_minute + 1)
    with client.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(minute_key(minute))
        counts = pipe.execute()
    return {kind: [int(count.get(kind, 0)) for count in counts] for kind in KINDS}


def chart(series: dict[str, list[int]], width: int = 600, height: int = 160) -> dict[str, object]:
    """Polyline points of each series for an inline SVG of WIDTH x HEIGHT (the template draws it)."""
    top = max([1, *(value for values in series.values() for value in values)])
    step = width / max(1, _MINUTES - 1)
    lines = {}
    for kind, values in series.items():
        points = (
            f"{n * step:.1f},{height - value / top * (height - 10):.1f}" for n, value in enumerate(values)
        )
        lines[kind] = " ".join(points)
    return {"width": width, "height": height, "top": top, "lines": lines, "queues": QUEUES}
