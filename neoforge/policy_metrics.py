"""The sending policy's Prometheus series: per provider (never credentials) and rate-limit waits.

Counters are written into the shared metrics hash by the policy's scripts
(pace.lua, throttle.lua, circuit.lua) and by ``mark_sent``; neoforge/metrics.py
renders them with these families. The circuit gauge is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from neoforge.settings import get_settings
from neoforge.store.keys import circuit_keys

__all__ = ["circuit_gauge", "policy_families", "zero_series"]


def policy_families() -> dict[str, CounterMetricFamily]:
    """Counter families by the metrics hash's field prefix (``provider_sent|primary`` ...)."""
    return {
        "provider_sent": CounterMetricFamily(
            "neoforge_provider_emails_sent", "Emails accepted, by the SMTP provider that took them.",
            labels=["provider"],
        ),
        "provider_attempts": CounterMetricFamily(
            "neoforge_provider_tokens", "Rate-limit tokens taken from a provider's bucket (one per try).",
            labels=["provider"],
        ),
        "provider_failures": CounterMetricFamily(
            "neoforge_provider_failures", "Failures counted against a provider's circuit breaker.",
            labels=["provider", "error_class"],
        ),
        "failover": CounterMetricFamily(
            "neoforge_provider_failovers", "Times a provider's circuit opened: sending moved to the next.",
            labels=["provider"],
        ),
        "throttled": CounterMetricFamily(
            "neoforge_provider_throttled",
            'Times a provider answered "too much mail": every sender held, then slowed down.',
            labels=["provider"],
        ),
        "paced": CounterMetricFamily(
            "neoforge_emails_paced", "Times an email waited for a rate-limit token (not an attempt).",
            labels=["priority"],
        ),
    }  # fmt: skip


def zero_series() -> list[tuple[str, ...]]:
    """Series that exist from the start (so rate() works at once): each provider's, each priority's."""
    names = [endpoint.name for endpoint in get_settings().endpoints()]
    series: list[tuple[str, ...]] = [(kind, name) for kind in ("provider_sent", "failover") for name in names]
    return series + [("paced", priority) for priority in ("transactional", "bulk")]


def circuit_gauge(client: redis.Redis) -> Iterator[Metric]:
    """``neoforge_provider_circuit_open``: 1 while a provider is avoided (open, or waiting for a probe)."""
    names = [endpoint.name for endpoint in get_settings().endpoints()]
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(circuit_keys(name)[0], "until")
        ends = pipe.execute()
    gauge = GaugeMetricFamily(
        "neoforge_provider_circuit_open",
        "1 while sending avoids a provider: its circuit is open, or no probe got through since it ended.",
        labels=["provider"],
    )
    for name, until in zip(names, ends, strict=True):
        gauge.add_metric([name], 0.0 if until is None else 1.0)
    yield gauge
