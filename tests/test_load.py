"""Holds under load: transactional mail is never starved by bulk, and lost emails are found in any backlog.

Real ``celery -A tasks worker`` processes (threads pool), the session's
redis-server and aiosmtpd server; bulk recipients' RCPT is delayed at the
server so that bulk mail keeps its share of the SMTP connections full.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import redis

from neoforge.processes import stop, wait_until
from tests.conftest import statuses, wait_for_status
from tests.smtp_server import SmtpServer

StartWorker = Callable[..., subprocess.Popen[bytes]]

# Bulk may use 8 of 10 SMTP connections; batches of 8.
LOAD_ENV = {
    "WORKER_POOL": "threads",
    "SMTP_MAX_CONNECTIONS": "10",
    "EMAIL_BULK_BATCH_SIZE": "8",
    "SMTP_TIMEOUT": "15",
    "BROKER_VISIBILITY_TIMEOUT": "60",
    "EMAIL_TASK_TIME_LIMIT": "20",
    "EMAIL_SCHEDULER_INTERVAL": "0.2",
}
BULK_BATCHES = 60
BULK_DELAY = 4.0  # seconds the server takes over each bulk recipient's RCPT

# For the recovery test: lost messages are looked for after about 1.6 x this.
VISIBILITY = 10
RECOVERY_ENV = {
    "WORKER_POOL": "threads",
    "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY),
    "EMAIL_TASK_TIME_LIMIT": "4",
    "EMAIL_SCHEDULER_INTERVAL": "0.2",
}


@pytest.fixture
def start_cli_worker(cli_workers: Callable[..., subprocess.Popen[bytes]]) -> StartWorker:
    """The real worker CLI; ``queues`` None means the configured ones (transactional, bulk, celery)."""

    def start(env: dict[str, str], queues: str | None = None) -> subprocess.Popen[bytes]:
        return cli_workers(queues, **env)

    return start


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_transactional_mail_is_not_starved_by_a_slow_bulk_backlog(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis, settings_env: Any
) -> None:
    """60 slow bulk batches fill the worker's bulk share; each transactional email still starts at once."""
    from neoforge.bulk import queue_bulk
    from tasks import send_email

    settings_env(**LOAD_ENV)
    recipients = [
        {"to": f"bulk{i}@example.com", "context": {"name": f"B{i}"}} for i in range(BULK_BATCHES * 8)
    ]
    for item in recipients:
        smtp_server.handler.rcpt_delays[item["to"]] = BULK_DELAY
    _, bulk_ids = queue_bulk({"template": "test_email", "subject": "Load bulk", "recipients": recipients})
    start_cli_worker(LOAD_ENV)  # 32 threads, the default

    # Saturated: the worker has taken at least as many batch messages as it has threads.
    wait_until(lambda: int(redis_client.hlen("unacked")) >= 32, 30, "bulk batches in the worker's hands")
    wait_until(lambda: "sending" in statuses(redis_client, bulk_ids), 30, "bulk emails in flight")

    waits: list[float] = []
    for n in range(5):
        result = send_email.apply_async(
            kwargs={"to": [f"urgent{n}@example.com"], "subject": f"Urgent {n}", "text": "code 1234"}
        )
        record = wait_for_status(result.id, {"sent", "failed"}, timeout=20)
        assert record["status"] == "sent", record
        waits.append(_when(record["timeline"][0]["started_at"]) - _when(record["created_at"]))
        # Bulk mail keeps to its share (at most half the 32 threads hold batches of 8) and is
        # still draining.
        seen = statuses(redis_client, bulk_ids)
        assert seen.count("sending") <= 16 * 8
        assert seen.count("sent") < len(bulk_ids)
    print(f"\nfirst attempts, {BULK_BATCHES} slow batches queued: {[round(w, 2) for w in waits]} s")
    assert max(waits) < 1.0, waits

    # Nothing of the bulk backlog is lost while batches wait their turn: all sent, once.
    smtp_server.handler.rcpt_delays.clear()

    def bulk_done() -> bool:
        return all(s == "sent" for s in statuses(redis_client, bulk_ids))

    wait_until(bulk_done, 60, "every bulk email sent", interval=0.2)
    counts = smtp_server.handler.deliveries()
    assert all(counts.get(email_id) == 1 for email_id in bulk_ids)


def test_a_lost_email_is_recovered_behind_thousands_of_waiting_ones(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis, settings_env: Any
) -> None:
    """600 emails on long retries and 3,000 bulk emails waiting in their queue, all older than a lost one."""
    from neoforge.bulk import queue_bulk
    from tasks import send_email

    retry_env = {**RECOVERY_ENV, "EMAIL_RETRY_BACKOFF": "600", "EMAIL_RETRY_BACKOFF_MAX": "600"}
    settings_env(**retry_env)
    queue = f"load-{uuid.uuid4().hex[:8]}"
    first = start_cli_worker(retry_env, queues=queue)  # nobody consumes the bulk queue here

    # Waiting on a long retry: in the pending index and in the scheduled set.
    deferred = [f"later{i}@example.com" for i in range(600)]
    for address in deferred:
        smtp_server.handler.rcpt_replies[address] = "451 4.7.1 Try again later"
    retrying = [
        send_email.apply_async(kwargs={"to": [a], "subject": "later", "text": "x"}, queue=queue).id
        for a in deferred
    ]

    def all_held() -> bool:
        return set(statuses(redis_client, retrying)) == {"retrying"} and (
            redis_client.zcard("neoforge:scheduled") == 600
        )

    wait_until(all_held, 60, "600 long retries held in the scheduled set")
    # Waiting in its queue: a bulk backlog that no worker here consumes.
    recipients = [{"to": f"backlog{i}@example.com", "context": {"name": f"B{i}"}} for i in range(3000)]
    _, backlog = queue_bulk({"template": "test_email", "subject": "Backlog", "recipients": recipients})

    stop(first)  # so that nobody takes the next message before it is lost
    result = send_email.apply_async(kwargs={"to": ["lost@example.com"], "subject": "lost", "text": "x"},
                                    queue=queue)  # fmt: skip
    lost_at = time.monotonic()
    assert redis_client.delete(queue) == 1  # the message is gone; the record says queued
    start_cli_worker(retry_env, queues=queue)
    assert redis_client.zcard("neoforge:pending") == 600 + 3000 + 1

    # Looked for after the grace period (visibility + a tenth + 5 s), by a sweep every quarter of it.
    grace = VISIBILITY + VISIBILITY // 10 + 5
    record = wait_for_status(result.id, {"sent"}, timeout=grace + VISIBILITY)
    print(f"\nlost email behind 3,600 waiting ones: sent {time.monotonic() - lost_at:.1f} s after its loss")
    assert record["attempts"] == 1
    assert smtp_server.handler.deliveries() == {result.id: 1}
    # The waiting ones were left alone: not published again, not sent.
    assert set(statuses(redis_client, retrying)) == {"retrying"}
    assert set(statuses(redis_client, backlog)) == {"queued"}
    assert redis_client.zcard("neoforge:scheduled") == 600
