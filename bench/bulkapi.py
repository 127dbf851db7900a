"""(h) The API while a 10,000-recipient bulk call runs: p99 of ``GET /health`` and ``POST /emails``.

One uvicorn process serves our API, no worker runs. Two probe clients (in
this process, on asyncio) send one ``GET /health`` and one ``POST /emails``
every PROBE_INTERVAL seconds, each waiting for its answer; their latencies are
taken while ``POST /emails/bulk`` with BULK recipients runs (from a thread,
body encoded beforehand), and, as the baseline in the same run, for as long
again with no bulk call at all. A stalled event loop shows as the probes'
p99 and maximum.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx2 as httpx

from bench.emails import email
from bench.report import Row
from bench.stack import API_KEY, Stack

__all__ = ["BULK_RECIPIENTS", "ProbeResult", "probes_during_bulk", "rows"]

BULK_RECIPIENTS = 10_000
PROBE_INTERVAL = 0.01
_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class ProbeResult:
    """Probe latencies (ms) with and without a bulk call running."""

    recipients: int
    bulk_seconds: float  # how long the bulk call took
    health_p99_ms: dict[str, float]  # "idle" / "bulk"
    health_max_ms: dict[str, float]
    post_p99_ms: dict[str, float]
    post_max_ms: dict[str, float]
    probes: dict[str, int]  # how many health probes each phase took

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return asdict(self)


def _bulk_body(count: int) -> bytes:
    recipients = [{"to": f"bulk{n}@example.com", "context": {"name": f"Bulk {n}"}} for n in range(count)]
    body = {"template": "test_email", "subject": "Bench bulk send", "recipients": recipients}
    return json.dumps(body).encode()


async def _probe(url: str, stop: threading.Event) -> tuple[list[float], list[float]]:
    """GET /health and POST /emails, each once per PROBE_INTERVAL, until STOP; their latencies."""
    health: list[float] = []
    posts: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=_HEADERS, timeout=30) as client:

        async def loop(kind: str) -> None:
            number = 0
            while not stop.is_set():
                started = time.perf_counter()
                if kind == "health":
                    response = await client.get("/health")
                    health.append(time.perf_counter() - started)
                else:
                    response = await client.post("/emails", json=email(number))
                    posts.append(time.perf_counter() - started)
                    number += 1
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"{kind} answered {response.status_code}: {response.text[:200]}")
                await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.perf_counter() - started)))

        await asyncio.gather(loop("health"), loop("post"))
    return health, posts


def _phase(url: str, body: bytes | None, idle_seconds: float) -> tuple[list[float], list[float], float]:
    """Probe while BODY is posted to /emails/bulk (or for IDLE_SECONDS if None); (health, posts, bulk s)."""
    stop = threading.Event()
    took = [0.0]
    failure: list[BaseException] = []

    def bulk() -> None:
        time.sleep(0.3)  # the probes are running first
        started = time.perf_counter()
        try:
            if body is None:
                time.sleep(idle_seconds)
            else:
                headers = _HEADERS | {"Content-Type": "application/json"}
                response = httpx.post(f"{url}/emails/bulk", content=body, headers=headers, timeout=120)
                if response.status_code != 202:
                    raise RuntimeError(f"bulk answered {response.status_code}: {response.text[:200]}")
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            took[0] = time.perf_counter() - started
            time.sleep(0.1)
            stop.set()

    thread = threading.Thread(target=bulk)
    thread.start()
    health, posts = asyncio.run(_probe(url, stop))
    thread.join()
    if failure:
        raise failure[0]
    return health, posts, took[0]


def _ms(values: list[float], share: float) -> float:
    if len(values) < 2 or share >= 1:
        return round(max(values, default=0.0) * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1] * 1000, 2)


def probes_during_bulk(stack: Stack, recipients: int = BULK_RECIPIENTS) -> ProbeResult:
    """(h): the probes' latencies during one bulk call of RECIPIENTS, and for as long with none."""
    stack.flush()
    body = _bulk_body(recipients)
    process, url = stack.start_api("ours")
    try:
        _phase(url, None, 1.0)  # warm-up
        bulk_health, bulk_posts, seconds = _phase(url, body, 0.0)
        idle_health, idle_posts, _ = _phase(url, None, seconds)
    finally:
        stack.stop(process.pid)
    return ProbeResult(
        recipients=recipients,
        bulk_seconds=round(seconds, 3),
        health_p99_ms={"idle": _ms(idle_health, 0.99), "bulk": _ms(bulk_health, 0.99)},
        health_max_ms={"idle": _ms(idle_health, 1.0), "bulk": _ms(bulk_health, 1.0)},
        post_p99_ms={"idle": _ms(idle_posts, 0.99), "bulk": _ms(bulk_posts, 0.99)},
        post_max_ms={"idle": _ms(idle_posts, 1.0), "bulk": _ms(bulk_posts, 1.0)},
        probes={"idle": len(idle_health), "bulk": len(bulk_health)},
    )


def rows(result: ProbeResult) -> list[Row]:
    """(h)'s lines of the table: "baseline" is the same probes with no bulk call running."""
    label = f"(h) during a {result.recipients:,}-recipient POST /emails/bulk ({result.bulk_seconds:.1f} s)"
    note = f"baseline: no bulk call running, same run; probes per phase {result.probes}"
    return [
        Row(f"{label}: GET /health p99 ms (lower is better)", result.health_p99_ms["idle"],
            result.health_p99_ms["bulk"], digits=2, note=note),
        Row("(h) same run: GET /health max ms", result.health_max_ms["idle"], result.health_max_ms["bulk"],
            digits=2),
        Row("(h) same run: POST /emails p99 ms", result.post_p99_ms["idle"], result.post_p99_ms["bulk"],
            digits=2),
        Row("(h) same run: POST /emails max ms", result.post_max_ms["idle"], result.post_max_ms["bulk"],
            digits=2),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.sink import ensure_smtp_sink

    stack = Stack.create(ensure_smtp_sink())
    try:
        stack.start_redis()
        stack.configure_this_process()
        print(json.dumps(probes_during_bulk(stack).as_dict(), indent=2))
    finally:
        stack.close()
        stack.remove_folder()
