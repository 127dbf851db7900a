"""The HTTP scenario: ``POST /emails`` under a bounded number of concurrent clients.

Each API runs one uvicorn process per CPU (ours: ``neoforge serve``, as the
README says; the baseline: bench/baseline_api.py with as many workers); no
worker runs, so only queueing is measured. The
client runs in this process, on asyncio with httpx, and its CPU is reported as
``bench``: when it nears one core, the figure is the client's limit, not the
server's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx2 as httpx

from bench.cpu import CpuSample
from bench.emails import email
from bench.stack import API_KEY, Stack, System

__all__ = ["ApiResult", "post_emails"]


@dataclass
class ApiResult:
    """What one API run measured."""

    system: System
    requests: int
    concurrency: int
    seconds: float
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return asdict(self)


async def _load(url: str, first: int, count: int, concurrency: int) -> tuple[list[float], float]:
    """POST COUNT emails with CONCURRENCY clients; return each request's latency and the wall time."""
    numbers = iter(range(first, first + count))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=30) as client:

        async def user() -> None:
            for number in numbers:
                started = time.perf_counter()
                response = await client.post("/emails", json=email(number))
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /emails answered {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def post_emails(stack: Stack, system: System, count: int, concurrency: int, warmup: int) -> ApiResult:
    """Start SYSTEM's API, warm it up with WARMUP requests, then time COUNT more."""
    stack.flush()
    process, url = stack.start_api(system)
    groups = {"redis": stack.redis_pid, "api": process.pid}
    try:
        asyncio.run(_load(url, 0, warmup, concurrency))
        before = CpuSample.take(groups)
        latencies, seconds = asyncio.run(_load(url, warmup, count, concurrency))
        after = CpuSample.take(groups)
    finally:
        stack.stop(process.pid)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return ApiResult(
        system=system,
        requests=count,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        rate=round(count / seconds, 1),
        p50_ms=round(cuts[49] * 1000, 2),
        p99_ms=round(cuts[98] * 1000, 2),
        cpu=after.since(before) | {"wall": round(seconds, 2)},
    )
