"""Fault tests with real processes: workers killed, Redis restarted or cut off, SMTP down or cut.

Workers here are the real ``celery -A tasks worker`` (prefork) on a queue of
their own, with a 10 s visibility timeout so that abandoned messages come
back within seconds. Deliveries are counted per email id at the SMTP server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from neoforge.processes import free_port, wait_until
from neoforge.store.keys import attempts_key
from tests.conftest import RedisServer, all_sent, statuses, wait_for_status
from tests.smtp_server import SmtpServer
from tests.tcp_proxy import TcpProxy

VISIBILITY = 10
FAULT_ENV = {
    "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY),
    "EMAIL_TASK_TIME_LIMIT": "4",
    "EMAIL_SCHEDULER_INTERVAL": "0.2",
    "EMAIL_MAX_RETRIES": "10",
    # Celery ignores `--pool prefork` once a pool is configured.
    "WORKER_POOL": "prefork",
}

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_cli_worker(cli_workers: Callable[..., subprocess.Popen[bytes]]) -> StartWorker:
    def start(queue: str, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        return cli_workers(queue, "--concurrency", str(concurrency), **{**FAULT_ENV, **env})

    return start


def _queue() -> str:
    return f"faults-{uuid.uuid4().hex[:8]}"


def _settled_after_kill(client: redis.Redis, ids: list[str], server: SmtpServer, timeout: float) -> int:
    """Wait until every email is sent or dead-lettered; check each reached the server at most once.

    An email whose DATA had begun when its worker died is dead-lettered as
    ``outcome_unknown`` (the server may have it), never sent again. Returns how many were.
    """
    last: list[str] = []

    def settled() -> bool:
        nonlocal last
        last = statuses(client, ids)
        return all(s in ("sent", "failed") for s in last)

    try:
        wait_until(settled, timeout, "every email sent or dead-lettered", interval=0.2)
    except TimeoutError:
        raise AssertionError({s: last.count(s) for s in set(last)}) from None
    counts = server.handler.deliveries()
    unknown = 0
    for email_id, status in zip(ids, last, strict=True):
        if status == "failed":
            assert client.hget(f"neoforge:email:{email_id}", "error_class") == "outcome_unknown"
            assert counts.get(email_id, 0) <= 1
            unknown += 1
        else:
            assert counts.get(email_id) == 1, (email_id, counts.get(email_id))
    return unknown


def _queue_emails(queue: str, count: int, subject: str) -> list[str]:
    from tasks import send_email

    return [
        send_email.apply_async(
            kwargs={"to": [f"f{i}@example.com"], "subject": subject, "text": "x"}, queue=queue
        ).id
        for i in range(count)
    ]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_killed_mid_send_loses_nothing(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis, pool: str
) -> None:
    queue = _queue()
    smtp_server.handler.rcpt_delay = 0.5  # emails are in flight, before the server has them
    concurrency = 2 if pool == "prefork" else 8
    first = start_cli_worker(queue, concurrency, WORKER_POOL=pool)
    ids = _queue_emails(queue, 12, "kill group")
    wait_until(lambda: statuses(redis_client, ids).count("sending") >= 2, 30, "emails in flight")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)

    smtp_server.handler.rcpt_delay = 0.0
    start_cli_worker(queue, concurrency, WORKER_POOL=pool)
    unknown = _settled_after_kill(redis_client, ids, smtp_server, VISIBILITY * 1.5 + 15)
    assert unknown <= concurrency  # only emails in hand at the kill
    print(f"\nkill -9 of a worker group: {len(ids)} emails, 0 duplicates, {unknown} outcome_unknown")


def test_worker_killed_mid_batch_loses_nothing(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis, settings_env: Any
) -> None:
    """Bulk batches in a threads-pool worker's hands when it dies: every email sent, once."""
    from neoforge.bulk import queue_bulk

    settings_env(EMAIL_BULK_BATCH_SIZE="5")
    smtp_server.handler.rcpt_delay = 0.5
    first = start_cli_worker("bulk", 8, WORKER_POOL="threads")
    recipients = [{"to": f"member{i}@example.com", "context": {"name": f"M{i}"}} for i in range(40)]
    _, ids = queue_bulk({"template": "test_email", "subject": "Kill batch", "recipients": recipients})
    wait_until(lambda: statuses(redis_client, ids).count("sending") >= 5, 30, "batches in flight")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)

    smtp_server.handler.rcpt_delay = 0.0
    start_cli_worker("bulk", 8, WORKER_POOL="threads")
    unknown = _settled_after_kill(redis_client, ids, smtp_server, VISIBILITY * 1.5 + 15)
    print(f"\nkill -9 mid-batch: {len(ids)} emails, 0 duplicates, {unknown} outcome_unknown")


def test_worker_killed_during_data_never_sends_twice(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    """Killed after DATA began, EMAIL_UNKNOWN_OUTCOME=dead_letter: the server may have the message,
    so it is dead-lettered, not resent."""
    queue = _queue()
    smtp_server.handler.data_delay = 2.0  # the server takes its time before its 250
    first = start_cli_worker(queue, 4, WORKER_POOL="threads", EMAIL_UNKNOWN_OUTCOME="dead_letter")
    [email_id] = _queue_emails(queue, 1, "kill in data")
    wait_until(lambda: redis_client.hget(f"neoforge:email:{email_id}", "data_attempt") == "1", 30, "DATA")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)

    smtp_server.handler.data_delay = 0.0
    start_cli_worker(queue, 4, WORKER_POOL="threads", EMAIL_UNKNOWN_OUTCOME="dead_letter")
    record = wait_for_status(email_id, {"sent", "failed"}, timeout=VISIBILITY * 1.5 + 15)
    assert record["status"] == "failed" and record["error_class"] == "outcome_unknown"
    assert record["attempts"] == 1
    assert smtp_server.handler.deliveries().get(email_id, 0) <= 1


def test_killed_pool_child_is_retried_at_once(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    queue = _queue()
    smtp_server.handler.rcpt_delay = 1.0
    start_cli_worker(queue)
    [email_id] = _queue_emails(queue, 1, "kill child")
    wait_for_status(email_id, {"sending"}, timeout=30)
    holder = redis_client.get(f"neoforge:email:{email_id}:lease")
    assert holder is not None
    pid = int(holder.split("|")[1])
    smtp_server.handler.rcpt_delay = 0.0
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    record = wait_for_status(email_id, {"sent", "failed"}, timeout=VISIBILITY)
    assert record["status"] == "sent"
    # At once: well before kombu would restore it (visibility timeout + a sweep).
    assert time.monotonic() - killed_at < VISIBILITY
    assert record["attempts"] == 2
    assert smtp_server.handler.deliveries() == {email_id: 1}


def test_redis_restart_loses_nothing(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis-restart")
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        queue = _queue()
        env = {"REDIS_URL": server.url, "EMAIL_RETRY_BACKOFF": "2", "EMAIL_RETRY_BACKOFF_MAX": "4"}
        smtp_server.handler.data_replies.extend(["451 4.3.0 later"] * 4)
        smtp_server.handler.rcpt_delay = 0.1
        # Queue from another process: this one's Celery app is bound to the session's Redis.
        script = (
            "import sys; from tasks import send_email; "
            f"[print(send_email.apply_async(kwargs={{'to': ['r{{}}@example.com'.format(i)], "
            f"'subject': 'restart', 'text': 'x'}}, queue='{queue}').id) for i in range(20)]"
        )
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
        ids = out.stdout.split()
        assert len(ids) == 20
        worker = start_cli_worker(queue, **env)
        wait_until(lambda: statuses(client, ids).count("retrying") >= 2, 30, "retries scheduled")
        waiting = client.llen(queue)
        client.shutdown()  # SHUTDOWN: fsync the append-only file, then exit
        assert server.process is not None
        server.process.wait(10)
        server.process = None
        server.start()  # same port, same data folder
        smtp_server.handler.rcpt_delay = 0.0
        # kombu 5.7 can end the worker when Redis vanishes while it closes a
        # channel ("Unrecoverable error: AttributeError ... hostname"); in
        # production a supervisor restarts it (compose: restart: unless-stopped).
        # Play that supervisor: what matters is that nothing in Redis is lost.
        time.sleep(1.0)
        restarted = worker.poll() is not None
        if restarted:
            start_cli_worker(queue, **env)
        all_sent(client, ids, timeout=VISIBILITY * 3 + 20)
        assert smtp_server.handler.deliveries() == dict.fromkeys(ids, 1)
        print(
            f"\nRedis restart: {len(ids)} emails ({waiting} waiting at the restart), none lost, none twice"
            f"{', worker restarted' if restarted else ''}"
        )
        client.close()
    finally:
        server.stop()


@pytest.mark.usefixtures("worker")
def test_smtp_outage_longer_than_two_backoffs(settings_env: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email

    port = free_port()
    settings_env(SMTP_PORT=str(port), EMAIL_RETRY_BACKOFF="0.2", EMAIL_RETRY_BACKOFF_MAX="0.4",
                 EMAIL_MAX_RETRIES="20")  # fmt: skip
    ids = [send_email.delay(to=["o@example.com"], subject="outage", text="x").id for _ in range(5)]

    def retried_twice() -> bool:
        return all(int(redis_client.hget(f"neoforge:email:{i}", "attempts") or 0) >= 3 for i in ids)

    wait_until(retried_twice, 30, "two retries each")
    server = SmtpServer(port)
    server.start()
    try:
        all_sent(redis_client, ids, timeout=30)
        assert server.handler.deliveries() == dict.fromkeys(ids, 1)
        for email_id in ids:
            record = wait_for_status(email_id, {"sent"})
            assert record["attempts"] >= 3
            assert [a["outcome"] for a in record["timeline"]][-1] == "sent"
            assert {a["error_class"] for a in record["timeline"][:-1]} == {"connection"}
    finally:
        server.stop()


@pytest.mark.usefixtures("worker")
def test_connection_cut_after_data_is_never_silently_resent(
    smtp_server: SmtpServer, settings_env: Any
) -> None:
    """EMAIL_UNKNOWN_OUTCOME=dead_letter: the server took it but we saw no reply: failed, never resent."""
    from tasks import send_email

    settings_env(EMAIL_UNKNOWN_OUTCOME="dead_letter")
    smtp_server.handler.drop_after_data = 1
    email_id = send_email.delay(to=["cut@example.com"], subject="cut", text="x").id
    record = wait_for_status(email_id, {"sent", "failed"})
    assert record["status"] == "failed"
    assert record["error_class"] == "outcome_unknown"
    assert record["attempts"] == 1
    time.sleep(0.5)  # a wrong automatic retry would arrive in this time
    assert smtp_server.handler.deliveries() == {email_id: 1}


@pytest.mark.usefixtures("worker")
def test_connection_cut_after_data_is_sent_again_by_default(smtp_server: SmtpServer) -> None:
    """The default, EMAIL_UNKNOWN_OUTCOME=retry: at least once, as mail servers behave (here, the
    server did take the first copy, so the person gets two: the documented price)."""
    from tasks import send_email

    smtp_server.handler.drop_after_data = 1
    email_id = send_email.delay(to=["cut@example.com"], subject="cut again", text="x").id
    record = wait_for_status(email_id, {"sent", "failed"})
    assert record["status"] == "sent" and record["attempts"] == 2
    assert [a["outcome"] for a in record["timeline"]] == ["retry", "sent"]
    assert record["timeline"][0]["error_class"] == "outcome_unknown"
    assert smtp_server.handler.deliveries() == {email_id: 2}


def test_two_workers_compete_for_four_hundred_emails(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    queue = _queue()
    start_cli_worker(queue)
    start_cli_worker(queue)
    ids = _queue_emails(queue, 400, "compete")
    all_sent(redis_client, ids, timeout=180)
    counts = smtp_server.handler.deliveries()
    assert len(counts) == 400 and set(counts.values()) == {1}
    with redis_client.pipeline(transaction=False) as pipe:
        for email_id in ids:
            pipe.lindex(attempts_key(email_id), -1)  # a sent record keeps no worker field
        workers = {json.loads(entry)["worker"].split("-")[0] for entry in pipe.execute()}
    assert len(workers) == 2, workers  # both did work


def test_redis_unreachable_while_scheduling_a_retry(
    start_cli_worker: StartWorker,
    smtp_server: SmtpServer,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    proxy = TcpProxy(free_port(), redis_server.port)
    proxy.start()
    try:
        queue = _queue()
        url = f"redis://127.0.0.1:{proxy.port}/0"
        start_cli_worker(queue, REDIS_URL=url, EMAIL_RETRY_BACKOFF="0.5", EMAIL_RETRY_BACKOFF_MAX="1")
        cut_once = []

        def cut_redis() -> None:
            # The 451 is about to go out: the worker's next step is to record
            # the retry and re-publish, and Redis is now out of reach.
            if not cut_once:
                cut_once.append(time.monotonic())
                proxy.cut()

        smtp_server.handler.data_replies.append("451 4.3.0 later")
        smtp_server.handler.data_hook = cut_redis
        [email_id] = _queue_emails(queue, 1, "cut redis")
        wait_until(lambda: bool(cut_once), 30, "the retry")
        smtp_server.handler.data_hook = None
        time.sleep(1.0)  # Redis stays away for a while, then comes back
        proxy.restore()
        record = wait_for_status(email_id, {"sent"}, timeout=VISIBILITY * 2 + 20)
        assert smtp_server.handler.deliveries() == {email_id: 1}
        assert record["attempts"] >= 2
    finally:
        proxy.stop()


def test_a_lost_broker_message_is_recovered_from_the_record(
    start_cli_worker: StartWorker, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    """The message vanishes from the broker (as in kombu's BRPOP window): the sweep publishes it again."""
    from tasks import send_email

    queue = _queue()
    result = send_email.apply_async(
        kwargs={"to": ["l@example.com"], "subject": "lost", "text": "x"}, queue=queue
    )
    assert redis_client.delete(queue) == 1  # the message is gone; the record says queued
    start_cli_worker(queue)
    record = wait_for_status(result.id, {"sent"}, timeout=VISIBILITY * 3 + 10)
    assert smtp_server.handler.deliveries() == {result.id: 1}
    assert record["attempts"] == 1
