"""Operations: Prometheus metrics with true queue depth, JSON logs, graceful shutdown, embedded worker."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from neoforge.processes import free_port, start, stop, wait_until
from tests.conftest import AUTH, ROOT, celery_cli, wait_for_status
from tests.smtp_server import SmtpServer


def _samples(api: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_queue_depth_gauges_without_a_worker(api: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email

    for i in range(3):
        send_email.delay(to=["m@example.com"], subject=f"wait {i}", text="x", priority="bulk")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    send_email.delay(to=["m@example.com"], subject="later", text="x", send_at=later)
    wait_until(lambda: _samples(api)[("neoforge_oldest_waiting_seconds", (("queue", "bulk"),))] > 0.05, 5,
               "an old message")  # fmt: skip
    samples = _samples(api)
    assert samples[("neoforge_queue_waiting", (("queue", "bulk"),))] == 3
    assert samples[("neoforge_queue_waiting", (("queue", "transactional"),))] == 0
    assert samples[("neoforge_scheduled_emails", ())] == 1
    assert samples[("neoforge_emails_queued_total", (("priority", "bulk"),))] == 3
    assert samples[("neoforge_emails_queued_total", (("priority", "transactional"),))] == 1
    assert "m@example.com" not in api.get("/metrics").text


@pytest.mark.usefixtures("worker")
def test_counters_histograms_and_in_hand_messages(
    api: Any, smtp_server: SmtpServer, settings_env: Any
) -> None:
    from tasks import send_email

    settings_env(EMAIL_RETRY_BACKOFF="3", EMAIL_RETRY_BACKOFF_MAX="3")
    smtp_server.handler.data_replies.extend(["451 4.3.0 later", "550 5.7.1 no"])
    retried = send_email.delay(to=["m@example.com"], subject="retried", text="x").id
    # The retry waits 1.5-3 s for its countdown, unacknowledged, in the worker's hands.
    wait_until(lambda: _samples(api)[("neoforge_queue_unacked", (("queue", "transactional"),))] >= 1, 10,
               "the retry in hand")  # fmt: skip
    failed = send_email.delay(to=["m@example.com"], subject="failed", text="x").id
    wait_for_status(failed, {"failed"})
    ok = [send_email.delay(to=["m@example.com"], subject=f"ok {i}", text="x").id for i in range(2)]
    for email_id in [*ok, retried]:
        wait_for_status(email_id, {"sent"})

    samples = _samples(api)
    assert samples[("neoforge_emails_sent_total", (("priority", "transactional"),))] == 3
    assert (
        samples[
            ("neoforge_emails_failed_total", (("error_class", "smtp_5xx"), ("priority", "transactional")))
        ]
        == 1
    )
    assert (
        samples[
            ("neoforge_emails_retried_total", (("error_class", "smtp_4xx"), ("priority", "transactional")))
        ]
        == 1
    )
    assert samples[("neoforge_delivery_latency_seconds_count", ())] == 3
    assert samples[("neoforge_send_duration_seconds_count", ())] == 3
    assert samples[("neoforge_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("neoforge_dead_letters", ())] == 1
    assert samples[("neoforge_workers_online", ())] >= 1


@pytest.fixture
def json_worker(tmp_path: Path, environment: dict[str, str]) -> Iterator[tuple[str, Path]]:
    queue = f"ops-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    process = celery_cli("worker", "-Q", queue, "-c", "2", "--hostname", f"json-{os.getpid()}@%h",
                         env={**environment, "LOG_FORMAT": "json"}, log=log)  # fmt: skip
    yield queue, log
    stop(process)


def test_json_logs_one_line_per_state_change_without_personal_data(
    json_worker: tuple[str, Path], smtp_server: SmtpServer
) -> None:
    from tasks import send_email

    queue, log = json_worker
    smtp_server.handler.data_replies.extend(
        ["451 4.3.0 later", "550 5.1.1 <secret.person@example.com> unknown"]
    )
    ids = [
        send_email.apply_async(kwargs={"to": ["secret.person@example.com"], "subject": "Private subject",
                                       "text": "the body text"}, queue=queue).id
        for _ in range(3)
    ]  # fmt: skip
    for email_id in ids:
        wait_for_status(email_id, {"sent", "failed"})
    wait_until(lambda: log.read_text().count('"email.') >= 8, 10, "log lines")
    text = log.read_text()
    assert "secret.person" not in text and "the body text" not in text and "Private subject" not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("id") in ids]
    kinds = {e["event"] for e in mine}
    assert {"email.sending", "email.sent", "email.failed", "email.retrying"} <= kinds
    for event in mine:
        assert event["level"] and event["time"] and event["logger"]
    [failed] = [e for e in mine if e["event"] == "email.failed"]
    assert failed["smtp_code"] == 550 and failed["error_class"] == "smtp_5xx"


def test_sigterm_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, environment: dict[str, str], smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    queue = f"ops-{uuid.uuid4().hex[:8]}"
    smtp_server.handler.rcpt_delay = 0.3
    first = celery_cli("worker", "-Q", queue, "-c", "2", env=environment, log=tmp_path / "first.log")
    ids = [send_email.apply_async(kwargs={"to": ["t@example.com"], "subject": "term", "text": "x"},
                                  queue=queue).id for _ in range(16)]  # fmt: skip
    wait_until(lambda: any(redis_client.hget(f"neoforge:email:{i}", "status") == "sending" for i in ids), 30,
               "in flight")  # fmt: skip
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    statuses = [redis_client.hget(f"neoforge:email:{i}", "status") for i in ids]
    assert "failed" not in statuses and "sending" not in statuses  # finished or handed back
    assert statuses.count("sent") < len(ids)  # it really stopped mid-batch
    smtp_server.handler.rcpt_delay = 0.0
    second = celery_cli("worker", "-Q", queue, "-c", "2", env=environment, log=tmp_path / "second.log")
    try:
        for email_id in ids:
            wait_for_status(email_id, {"sent"}, timeout=60)
    finally:
        stop(second)
    assert smtp_server.handler.deliveries() == dict.fromkeys(ids, 1)


def test_embedded_worker_in_the_api_process(
    tmp_path: Path, environment: dict[str, str], smtp_server: SmtpServer
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "neoforge.main:app", "--host=127.0.0.1", f"--port={port}"]
    env = {**os.environ, **environment, "EMBEDDED_WORKER": "true"}
    api = start(command, env=env, log=tmp_path / "api.log", cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{base}/health", timeout=2).status == 200, 30, "API")
        body = json.dumps({"to": ["e@example.com"], "subject": "embedded", "text": "x"}).encode()
        request = urllib.request.Request(
            f"{base}/emails", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            email_id = json.loads(response.read())["id"]
        wait_for_status(email_id, {"sent"}, timeout=30)
        assert [m.rcpt_tos for m in smtp_server.handler.messages] == [["e@example.com"]]
        api.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert api.wait(30) in (0, -signal.SIGTERM)
    finally:
        stop(api)
    log = (tmp_path / "api.log").read_text()
    assert "worker.embedded_started" in log and "worker.embedded_stopped" in log
    assert "Application shutdown complete" in log


def test_worker_stop_stops_its_scheduler_thread(celery_app: Any) -> None:
    """Celery's stop (and terminate) reach our bootstep: no scheduler thread outlives its worker."""
    import threading

    from celery.contrib.testing.worker import start_worker

    def schedulers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "neoforge-scheduler" and t.is_alive()}

    before = schedulers()
    ours: set[threading.Thread] = set()
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ):
        wait_until(lambda: bool(ours.update(schedulers() - before) or ours), 10, "the scheduler thread")
    wait_until(lambda: not any(t.is_alive() for t in ours), 10, "the scheduler thread gone")
