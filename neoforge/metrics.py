"""Prometheus metrics, read from Redis at scrape time so that every process agrees.

Counters and histograms are written by the workers into Redis (neoforge/store.py)
in the same transaction as the status change they count; gauges are measured
at scrape time: the broker's lists, its unacknowledged hash (prefetched
messages and retries waiting for their countdown), our scheduled set and dead
letters, and the workers' heartbeats.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from neoforge.broker import UNACKED, message_ids, published_at, routing_key
from neoforge.policy_metrics import circuit_gauge, policy_families, zero_series
from neoforge.store import DURATION_BUCKETS, LATENCY_BUCKETS
from neoforge.store.keys import (
    FAILED,
    LATENCY,
    METRICS,
    SCHEDULED,
    SEND_DURATION,
    SMTP_PAUSED,
    SUPPRESSED,
    SUPPRESSED_EXPIRY,
    WEBHOOKS_FAILED,
    WORKERS,
)

__all__ = ["QUEUES", "WORKERS", "heartbeat", "render"]

# Every queue a worker consumes by default: ours, and Celery's default queue,
# where a client that knows only the task's name publishes.
QUEUES = ("transactional", "bulk", "celery")
_HEARTBEAT_TTL = 15.0


def heartbeat(client: redis.Redis, hostname: str) -> None:
    """Say that worker HOSTNAME is alive (called every scheduler tick), by Redis's clock."""
    seconds, micros = client.time()
    client.zadd(WORKERS, {hostname: seconds + micros / 1e6})


class _Collector(Collector):
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        c = self.client
        now = time.time()
        seconds, _ = c.time()  # heartbeats are Redis's time (the rest: ages, as this host sees them)
        with c.pipeline(transaction=False) as pipe:
            pipe.hgetall(METRICS)
            pipe.hgetall(LATENCY)
            pipe.hgetall(SEND_DURATION)
            for queue in QUEUES:
                pipe.llen(queue)
                pipe.lindex(queue, -1)
            pipe.hvals(UNACKED)
            pipe.zcard(SCHEDULED)
            pipe.zcard(FAILED)
            pipe.zcount(WORKERS, seconds - _HEARTBEAT_TTL, "+inf")
            pipe.hmget(SMTP_PAUSED, ["until", "error_class"])
            pipe.info("memory")
            pipe.info("persistence")
            # Last three: the sending policy's (read first below).
            pipe.zcard(SUPPRESSED)
            pipe.zcount(SUPPRESSED_EXPIRY, "-inf", now)
            pipe.llen(WEBHOOKS_FAILED)
            replies = pipe.execute()
        suppressed, lapsed, webhook_dead = replies[-3:]
        replies = replies[:-3]
        counters, latency, duration = replies[0], replies[1], replies[2]
        waiting = dict(zip(QUEUES, replies[3 : 3 + 2 * len(QUEUES) : 2], strict=True))
        oldest_raw = dict(zip(QUEUES, replies[4 : 4 + 2 * len(QUEUES) : 2], strict=True))
        unacked_raw, scheduled, dead, workers, (paused_until, paused_class), memory, persistence = replies[
            3 + 2 * len(QUEUES) :
        ]

        yield from _counters(counters)
        yield _histogram("neoforge_delivery_latency_seconds", "Queued to accepted by the SMTP server.",
                         latency, LATENCY_BUCKETS)  # fmt: skip
        yield _histogram("neoforge_send_duration_seconds", "One delivery attempt, SMTP dialogue included.",
                         duration, DURATION_BUCKETS)  # fmt: skip

        gauge = GaugeMetricFamily("neoforge_queue_waiting", _WAITING_HELP, labels=["queue"])
        for queue, length in waiting.items():
            gauge.add_metric([queue], float(length))
        yield gauge

        in_hand: Counter[str] = Counter(key for raw in unacked_raw if (key := routing_key(raw)) is not None)
        gauge = GaugeMetricFamily(
            "neoforge_queue_unacked",
            "Messages taken by workers and not yet acknowledged: in progress, prefetched, or a retry "
            "waiting for its countdown.",
            labels=["queue"],
        )
        for queue in QUEUES:
            gauge.add_metric([queue], float(in_hand.get(queue, 0)))
        yield gauge

        gauge = GaugeMetricFamily("neoforge_oldest_waiting_seconds", "Age of the oldest waiting message.",
                                  labels=["queue"])  # fmt: skip
        for queue in QUEUES:
            gauge.add_metric([queue], self._age(oldest_raw[queue], now))
        yield gauge
        yield GaugeMetricFamily("neoforge_scheduled_emails", "Emails held for a later send or a long retry.",
                                value=float(scheduled))  # fmt: skip
        yield GaugeMetricFamily("neoforge_dead_letters", "Failed emails kept for requeue.", value=float(dead))
        yield GaugeMetricFamily(
            "neoforge_workers_online", "Workers seen in the last 15 s.", value=float(workers)
        )
        yield GaugeMetricFamily("neoforge_suppressed_addresses", "Suppression list entries in force "
                                "(an address suppressed for several lists counts once per list).",
                                value=float(int(suppressed) - int(lapsed)))  # fmt: skip
        yield GaugeMetricFamily("neoforge_webhook_dead_letters", "Webhook deliveries that gave up, kept "
                                "for requeue.", value=float(webhook_dead))  # fmt: skip
        gauge = GaugeMetricFamily(
            "neoforge_sending_paused",
            "1 while sending is paused after a setup failure (login refused, TLS), by its error class.",
            labels=["error_class"],
        )
        # Until a probe succeeds: the pause's end may pass while no email comes to probe.
        gauge.add_metric([str(paused_class or "none")], 0.0 if paused_until is None else 1.0)
        yield gauge
        yield from circuit_gauge(c)
        yield from _redis_gauges(memory, persistence)

    def _age(self, raw: Any, now: float) -> float:
        ids = message_ids(raw) if raw else []
        published = published_at(self.client, ids[0]) if ids else None
        return max(0.0, now - published) if published else 0.0


def _redis_gauges(memory: dict[str, Any], persistence: dict[str, Any]) -> Iterator[Metric]:
    # Redis refuses every write at maxmemory (noeviction) or when persisting
    # fails (MISCONF); queueing stops earlier, at REDIS_MEMORY_HEADROOM.
    yield GaugeMetricFamily("neoforge_redis_used_memory_bytes", "Memory Redis uses (INFO used_memory).",
                            value=float(memory.get("used_memory") or 0))  # fmt: skip
    yield GaugeMetricFamily("neoforge_redis_maxmemory_bytes", "Redis's maxmemory (0: no limit).",
                            value=float(memory.get("maxmemory") or 0))  # fmt: skip
    gauge = GaugeMetricFamily(
        "neoforge_redis_persistence_ok",
        "1 while Redis's last write of the kind (aof: append-only file, rdb: snapshot) succeeded; "
        "0 means Redis refuses writes (MISCONF).",
        labels=["kind"],
    )
    gauge.add_metric(["aof"], 0.0 if persistence.get("aof_last_write_status") == "err" else 1.0)
    gauge.add_metric(["rdb"], 0.0 if persistence.get("rdb_last_bgsave_status") == "err" else 1.0)
    yield gauge


_WAITING_HELP = (
    "Messages waiting in the broker queue (a bulk message carries up to EMAIL_BULK_BATCH_SIZE emails)."
)


def _counters(values: dict[str, str]) -> Iterator[Metric]:
    families = {
        "queued": CounterMetricFamily("neoforge_emails_queued", "Emails queued.", labels=["priority"]),
        "sent": CounterMetricFamily(
            "neoforge_emails_sent", "Emails accepted by the SMTP server.", labels=["priority"]
        ),
        "failed": CounterMetricFamily(
            "neoforge_emails_failed", "Emails that failed (dead letters).", labels=["priority", "error_class"]
        ),
        "retried": CounterMetricFamily(
            "neoforge_emails_retried",
            "Delivery attempts that will be retried.",
            labels=["priority", "error_class"],
        ),
        "expired": CounterMetricFamily(
            "neoforge_emails_expired", "Emails that expired unsent.", labels=["priority"]
        ),
        "unreplicated": CounterMetricFamily(
            "neoforge_emails_unreplicated",
            "Emails accepted although no replica confirmed their record within REDIS_WAIT_TIMEOUT.",
            labels=[],
        ),
        "suppressed": CounterMetricFamily(
            "neoforge_emails_suppressed",
            "Emails that ended unsent: every recipient suppressed.",
            labels=["priority"],
        ),
        "suppression_added": CounterMetricFamily(
            "neoforge_suppressions_added", "Addresses put on the suppression list.", labels=["reason"]
        ),
        "webhook": CounterMetricFamily(
            "neoforge_webhook_deliveries",
            "Webhook POSTs: delivered, retried, or failed (gave up).",
            labels=["outcome"],
        ),
        "fenced": CounterMetricFamily(
            "neoforge_lease_fenced",
            "Writes refused because another sender took the email over (its lease's fence moved on): "
            "data (the attempt did not send), sent, retrying, failed, ...",
            labels=["write"],
        ),
        "paused": CounterMetricFamily(
            "neoforge_sending_pauses",
            "Times sending was paused (or kept paused) by a setup failure.",
            labels=["error_class"],
        ),
    }
    families.update(policy_families())
    seen: set[tuple[str, ...]] = set()
    for field, value in values.items():
        kind, *labels = field.split("|")
        family = families.get(kind)
        if family is not None:
            family.add_metric(labels, float(value))
            seen.add((kind, *labels))
    for priority in ("transactional", "bulk"):  # every series exists from the start, so rate() works at once
        for kind in ("queued", "sent", "expired", "suppressed"):
            if (kind, priority) not in seen:
                families[kind].add_metric([priority], 0.0)
    for kind, *labels in zero_series():
        if (kind, *labels) not in seen:
            families[kind].add_metric(labels, 0.0)
    for kind, names in (("suppression_added", ("bounce", "manual", "unsubscribe")),
                        ("webhook", ("delivered", "retried", "failed"))):  # fmt: skip
        for label in names:
            if (kind, label) not in seen:
                families[kind].add_metric([label], 0.0)
    yield from families.values()


def _histogram(name: str, doc: str, values: dict[str, str], bounds: tuple[float, ...]) -> Metric:
    cumulative = 0.0
    buckets = []
    for bound in bounds:
        cumulative += float(values.get(str(bound), 0))
        buckets.append((str(float(bound)), cumulative))
    cumulative += float(values.get("+Inf", 0))
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(values.get("sum", 0)))


def render(client: redis.Redis) -> bytes:
    """The Prometheus text exposition of every metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(client))
    return bytes(generate_latest(registry))
