"""Leases that hold across hosts: heartbeats in Redis, fencing tokens, Redis's clock.

Real ``celery -A tasks worker`` processes (threads pool, a queue of their own),
the real Redis and the test SMTP server, which counts DATA per Message-ID.
A worker is "partitioned" by SIGSTOP (its heartbeat stops, as it would for a
host cut off from Redis) and its clock is skewed with libfaketime
(scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import redis

from neoforge.processes import wait_until
from tests.conftest import wait_for_status
from tests.smtp_server import SmtpServer

Start = Callable[..., subprocess.Popen[bytes]]

ENV = {
    "WORKER_POOL": "threads",
    "EMAIL_HEARTBEAT_TIMEOUT": "1",
    # A lease far longer than the test: taking an email over must not wait for it.
    "EMAIL_TASK_TIME_LIMIT": "30",
    "BROKER_VISIBILITY_TIMEOUT": "60",
    # A stopped worker's SMTP command must not time out on its own while it is stopped.
    "SMTP_TIMEOUT": "30",
}


def _queue(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _publish_again(email_id: str, queue: str) -> None:
    """A second message for the email, as the broker's redelivery or the recovery sweep sends."""
    from tasks import send_email

    send_email.apply_async(kwargs={"email_id": email_id}, queue=queue)


def test_a_partitioned_worker_is_taken_over_and_neither_sends_nor_records(
    cli_workers: Start, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    queue = _queue("partition")
    workers = [cli_workers(queue, "--concurrency", "2", **ENV) for _ in range(2)]
    address = "partition@example.com"
    held = smtp_server.handler.rcpt_holds[address] = threading.Event()
    email_id = send_email.apply_async(kwargs={"to": [address], "subject": "p", "text": "x"}, queue=queue).id
    # Its first sender is in the dialogue, before DATA: the server holds its RCPT.
    wait_until(lambda: address in smtp_server.handler.holding, 30, "the first RCPT")
    key = f"neoforge:email:{email_id}"
    first_worker = redis_client.hget(key, "worker")
    holder = str(redis_client.get(f"{key}:lease"))
    pid = int(holder.split("|")[1])
    stopped = next(w for w in workers if w.pid == pid)
    os.killpg(stopped.pid, signal.SIGSTOP)
    try:
        # Its heartbeat lapses (by Redis's clock); a second message reaches the other worker.
        alive = "neoforge:alive:" + holder.rpartition("|")[0]
        wait_until(lambda: not redis_client.exists(alive), 10, "the stopped worker's heartbeat to lapse")
        _publish_again(email_id, queue)
        record = wait_for_status(email_id, {"sent"}, timeout=10)
        assert record["timeline"][-1]["worker"] != first_worker
        assert redis_client.hget(key, "fence") == "2"
    finally:
        held.set()  # the server answers the stopped worker's RCPT: it would go on to DATA
        os.killpg(stopped.pid, signal.SIGCONT)
    # It comes back: its DATA mark is refused (counted), so it ends before DATA.
    wait_until(lambda: redis_client.hget("neoforge:metrics", "fenced|data") == "1", 15, "the refusal")
    assert smtp_server.handler.deliveries() == {email_id: 1}
    record = wait_for_status(email_id, {"sent"})
    assert record["timeline"][-1]["worker"] != first_worker
    assert [entry["outcome"] for entry in record["timeline"]] == ["sent"]


def _faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing: run scripts/system-deps.sh"
    return found[0]


def test_a_skewed_worker_keeps_leases_and_schedules_by_redis_time(
    cli_workers: Start, smtp_server: SmtpServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from tasks import send_email

    # The wall clock only, as a host whose NTP is off: its monotonic clock (timeouts, waits) is right.
    skew = {"LD_PRELOAD": _faketime_library(), "FAKETIME": "+5m", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    clock = [sys.executable, "-c", "import time; print(time.time())"]
    ahead = subprocess.run(clock, env={**os.environ, **skew}, capture_output=True, text=True, check=True)
    assert float(ahead.stdout) > _redis_now(redis_client) + 200  # the skew is real
    honest, skewed = _queue("honest"), _queue("skewed")
    # Only the skewed worker sweeps the scheduled set (the honest one's first sweep is a minute away).
    cli_workers(honest, "--concurrency", "2", **ENV, EMAIL_SCHEDULER_INTERVAL="60")
    cli_workers(skewed, "--concurrency", "2", **ENV, EMAIL_SCHEDULER_INTERVAL="0.2", **skew)

    # A scheduled send a few seconds ahead (Redis's clock), unexpired for two minutes.
    send_at = _redis_now(redis_client) + 4
    arrived: list[float] = []
    smtp_server.handler.data_hook = lambda: arrived.append(_redis_now(redis_client))
    scheduled = send_email.apply_async(
        kwargs={"to": ["later@example.com"], "subject": "s", "text": "x", "send_at": _iso(send_at),
                "expires_at": _iso(send_at + 120)},
        queue=skewed,
    ).id  # fmt: skip

    # An email the honest worker is sending; a second message for it reaches the skewed one.
    address = "held@example.com"
    held = smtp_server.handler.rcpt_holds[address] = threading.Event()
    leased = send_email.apply_async(kwargs={"to": [address], "subject": "l", "text": "x"}, queue=honest).id
    try:
        wait_until(lambda: address in smtp_server.handler.holding, 30, "the honest worker's RCPT")
        _publish_again(leased, skewed)
        log = next(iter(tmp_path.glob("w1-*.log")))
        wait_until(lambda: f"email.leased id={leased}" in log.read_text(), 15, "the skewed worker's look")
        # The scheduled one goes out meanwhile (the other is held at RCPT): not before its send_at,
        # by Redis's clock, and not expired by the skewed clock.
        wait_for_status(scheduled, {"sent"}, timeout=15)
        assert len(arrived) == 1 and arrived[0] >= send_at
    finally:
        held.set()
    wait_for_status(leased, {"sent"}, timeout=15)
    assert smtp_server.handler.deliveries() == {leased: 1, scheduled: 1}
    assert redis_client.hget(f"neoforge:email:{leased}", "fence") == "1"  # never taken over
