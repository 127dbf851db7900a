"""Redis bytes per email by state: ``python -m bench.capacity [--emails N] [--json PATH]``.

Each state is measured on an emptied private Redis, through the real paths:
N emails queued with ``send_email.delay()`` (and N recipients with
``queue_bulk``) and no worker; N sent by real ``celery -A tasks worker``
processes to ``smtp-sink``; N dead-lettered by the same workers against an
SMTP server that refuses every recipient with 550. The figure per state is
Redis's ``used_memory`` after the N emails reached the state minus before they
were queued (the workers warmed up first, and stopped at both readings), divided by N; next to it,
``MEMORY USAGE`` of one email's own keys, by key.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from bench.bulk import queue_bulk_recipients
from bench.emails import email
from bench.sink import ensure_smtp_sink
from bench.stack import ROOT, Stack
from neoforge.processes import free_port

__all__ = ["StateResult", "main", "measure"]

_SETTLE = 1.5  # seconds for in-flight writes (acks, the append-only file's buffer) to land
_WAIT = 120.0  # seconds N emails may take to reach their state


@dataclass
class StateResult:
    """Redis memory for N emails in one state."""

    state: str
    emails: int
    bytes_per_email: float  # used_memory delta / N
    keys: dict[str, int] = field(default_factory=dict)  # MEMORY USAGE of one email's keys, by family
    census: dict[str, float] = field(default_factory=dict)  # every key's MEMORY USAGE by pattern, / N
    info: dict[str, float] = field(default_factory=dict)  # INFO memory fields' deltas, / N

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Refuse:
    """An SMTP server's handler that refuses every recipient for good."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return "550 5.1.1 No such user here"


_INFO = ("used_memory", "used_memory_dataset", "used_memory_overhead", "mem_clients_normal", "mem_aof_buffer")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _memory(stack: Stack) -> dict[str, int]:
    client = stack.redis()
    try:
        info = client.info("memory")
        return {name: int(info.get(name, 0)) for name in _INFO}
    finally:
        client.close()


def _census(stack: Stack, count: int) -> dict[str, float]:
    """MEMORY USAGE of every key, summed by pattern (ids and digests named), per email."""
    client = stack.redis()
    sizes: dict[str, int] = {}
    try:
        for key in client.scan_iter(count=1000):
            pattern = _DIGEST.sub("{sha256}", _UUID.sub("{id}", str(key)))
            sizes[pattern] = sizes.get(pattern, 0) + int(client.memory_usage(key, samples=0) or 0)
    finally:
        client.close()
    ordered = sorted(sizes.items(), key=lambda item: -item[1])
    return {pattern: round(size / count, 1) for pattern, size in ordered if size >= count}


def _wait_for(stack: Stack, ids: list[str], status: str) -> None:
    client = stack.redis()
    deadline = time.monotonic() + _WAIT
    try:
        while True:
            with client.pipeline(transaction=False) as pipe:
                for email_id in ids:
                    pipe.hget(f"neoforge:email:{email_id}", "status")
                left = sum(1 for found in pipe.execute() if found != status)
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} of {len(ids)} emails not {status} after {_WAIT:.0f} s")
            time.sleep(0.25)
    finally:
        client.close()


def _keys(stack: Stack, email_id: str, address: str) -> dict[str, int]:
    """MEMORY USAGE of EMAIL_ID's own keys (0 for those it does not have)."""
    from neoforge.store.keys import address_digest, recipient_key, suppressed_key

    client = stack.redis()
    names = {
        "record": f"neoforge:email:{email_id}",
        "payload": f"neoforge:email:{email_id}:payload",
        "timeline": f"neoforge:email:{email_id}:attempts",
        "celery_result": f"celery-task-meta-{email_id}",
        "recipient_index": recipient_key(address),
        "suppression": suppressed_key(address_digest(address)),
    }
    try:
        return {name: int(client.memory_usage(key, samples=0) or 0) for name, key in names.items()}
    finally:
        client.close()


def _single(count: int, first: int = 0) -> list[str]:
    from tasks import send_email

    return [send_email.delay(**email(number)).id for number in range(first, first + count)]


def measure(
    stack: Stack, state: str, count: int, enqueue: Callable[[int], list[str]], smtp_port: int | None = None
) -> StateResult:
    """COUNT emails queued by ENQUEUE and, with SMTP_PORT, handled by our workers until they reach STATE.

    STATE's first word is the status waited for ("queued (bulk)": queued).
    """
    stack.flush()
    workers = []
    try:
        if smtp_port is not None:
            # Warm-up: every key made once (metrics, heartbeats) exists before. Another
            # address, as a refused one is suppressed.
            workers = stack.start_workers("ours", smtp_port)
            _wait_for(stack, _single(1, first=count), state.split()[0])
            stack.stop_workers(workers)
        # Measured with no worker connected: their connections' buffers are not the emails'.
        time.sleep(_SETTLE)
        before = _memory(stack)
        ids = enqueue(count)
        if smtp_port is not None:
            workers = stack.start_workers("ours", smtp_port)
        _wait_for(stack, ids, state.split()[0])
    finally:
        stack.stop_workers(workers)
    time.sleep(_SETTLE)
    after = _memory(stack)
    sample = ids[count // 2]
    census = _census(stack, count)
    address = "bulk{}@example.com" if state == "queued (bulk)" else "user{}@example.com"
    return StateResult(
        state=state,
        emails=count,
        bytes_per_email=round((after["used_memory"] - before["used_memory"]) / count, 1),
        keys=_keys(stack, sample, address.format(count // 2)),
        census=census,
        info={name: round((after[name] - before[name]) / count, 1) for name in _INFO},
    )


def _table(results: list[StateResult], ttl: int) -> list[str]:
    lines = [
        "| state | Redis bytes per email | of which one email's keys (MEMORY USAGE) |",
        "|---|---|---|",
    ]
    for result in results:
        parts = ", ".join(f"{name} {size:,}" for name, size in result.keys.items() if size)
        lines.append(f"| {result.state} | {result.bytes_per_email:,.0f} | {parts} |")
    sent = next(r.bytes_per_email for r in results if r.state == "sent")
    queued = next(r.bytes_per_email for r in results if r.state == "queued")
    lines += [
        "",
        f"Sent emails kept EMAIL_STATUS_TTL={ttl} s ({ttl / 86400:g} days); maxmemory for them plus "
        "a day's emails queued (an outage), with REDIS_MEMORY_HEADROOM's 10% kept free:",
        "",
        "| emails a day | sent records kept | Redis for them | maxmemory |",
        "|---|---|---|---|",
    ]
    for per_day in (10_000, 100_000, 1_000_000):
        kept = per_day * ttl / 86400
        needed = (kept * sent + per_day * queued) / 0.9
        mib = kept * sent / 2**20
        lines.append(f"| {per_day:,} | {kept:,.0f} | {mib:,.0f} MiB | {needed / 2**20:,.0f} MiB |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000, help="emails per state (default 2000)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    args = parser.parse_args(argv)
    stack = Stack.create(ensure_smtp_sink())
    refusing = Controller(_Refuse(), hostname="127.0.0.1", port=free_port())
    refusing.start()
    results: list[StateResult] = []
    try:
        stack.start_redis()
        stack.configure_this_process()
        sink = stack.start_sink()
        results.append(measure(stack, "queued", args.emails, _single))
        results.append(measure(stack, "queued (bulk)", args.emails, queue_bulk_recipients))
        results.append(measure(stack, "sent", args.emails, _single, sink.port))
        results.append(measure(stack, "failed", args.emails, _single, refusing.port))
        client = stack.redis()
        server = client.info("server")
        client.close()
    finally:
        refusing.stop()
        stack.close()
        stack.remove_folder()
    from neoforge.settings import get_settings

    ttl = get_settings().email_status_ttl
    print("\n".join(_table(results, ttl)))
    print("\nEvery key's MEMORY USAGE by pattern, per email, and INFO memory deltas per email:")
    for result in results:
        keys = ", ".join(f"{pattern} {size:,.0f}" for pattern, size in list(result.census.items())[:8])
        info = ", ".join(f"{name} {size:,.0f}" for name, size in result.info.items())
        print(f"- {result.state}: {keys}; INFO: {info}")
    print(f"\nredis-server {server['redis_version']}, {args.emails} emails per state")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"redis_server": server["redis_version"], "status_ttl": ttl,
             "results": [r.as_dict() for r in results]},
            indent=2,
        )
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
