"""Idempotency, dead letters, scheduling, priority, expiry and the ledger, with the in-process worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from neoforge.processes import wait_until
from tests.conftest import AUTH, ROOT, wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")


def _email(subject: str, **extra: Any) -> dict[str, Any]:
    return {"to": ["g@example.com"], "subject": subject, "text": "x", **extra}


def test_configuration_keeps_broker_delays_inside_the_visibility_timeout() -> None:
    from neoforge.scheduler import max_broker_delay
    from neoforge.settings import get_settings
    from tasks import app

    options = app.conf.broker_transport_options
    visibility = options["visibility_timeout"]
    time_limit = app.conf.task_time_limit
    longest_delay = max_broker_delay(get_settings())
    # A message held for the longest countdown and then run to the time limit
    # is acknowledged before the transport would restore it.
    assert longest_delay + time_limit < visibility
    assert visibility <= 15 * 60, "a crash must delay an email by minutes, not hours"
    sweep = options["unacked_restore_interval"] * options["unacked_restore_throttle"]
    assert sweep <= visibility / 5
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert options["socket_timeout"] and options["socket_connect_timeout"]


def test_idempotency_key_returns_the_same_id_even_concurrently(
    smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    ids: list[str] = []
    barrier = threading.Barrier(8)

    def queue() -> None:
        barrier.wait()
        ids.append(send_email.delay(**_email("once only", idempotency_key="reset-42")).id)

    threads = [threading.Thread(target=queue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    wait_for_status(ids[0], {"sent"})
    again = send_email.delay(**_email("once only", idempotency_key="reset-42")).id
    assert again == ids[0]
    time.sleep(0.3)  # give a wrongly queued duplicate the chance to arrive
    assert len(smtp_server.handler.by_subject("once only")) == 1
    other = send_email.delay(**_email("once only", idempotency_key="reset-43")).id
    assert other != ids[0]


def test_idempotency_over_http(api: Any) -> None:
    first = api.post("/emails", json=_email("http once", idempotency_key="k1"), headers=AUTH)
    second = api.post("/emails", json=_email("http once", idempotency_key="k1"), headers=AUTH)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]


def test_dead_letters_list_and_requeue(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.data_replies.extend(["554 5.7.1 no"] * 3)
    ids = [send_email.delay(**_email(f"dead {i}")).id for i in range(3)]
    for email_id in ids:
        wait_for_status(email_id, {"failed"})

    page = api.get("/emails", params={"status": "failed", "limit": 2}, headers=AUTH).json()
    assert len(page["items"]) == 2 and page["next_before"] is not None
    rest = api.get("/emails", params={"status": "failed", "before": page["next_before"]}, headers=AUTH).json()
    listed = [item["id"] for item in page["items"] + rest["items"]]
    assert sorted(listed) == sorted(ids) and rest["next_before"] is None
    failed_at = [item["failed_at"] for item in page["items"] + rest["items"]]
    assert failed_at == sorted(failed_at, reverse=True)

    response = api.post(f"/emails/{ids[0]}/requeue", headers=AUTH)
    assert response.status_code == 202
    record = wait_for_status(ids[0], {"sent"})
    assert record["attempts"] == 1
    assert [a["outcome"] for a in record["timeline"]] == ["failed", "requeued", "sent"]
    assert api.post(f"/emails/{ids[0]}/requeue", headers=AUTH).status_code == 409
    assert api.post("/emails/nope/requeue", headers=AUTH).status_code == 404

    assert api.post("/emails/requeue", json={"error_class": "connection"}, headers=AUTH).json() == {
        "requeued": 0
    }
    assert api.post("/emails/requeue", json={}, headers=AUTH).json() == {"requeued": 2}
    for email_id in ids[1:]:
        wait_for_status(email_id, {"sent"})
    assert api.get("/emails", params={"status": "failed"}, headers=AUTH).json()["items"] == []
    assert len([m for m in smtp_server.handler.messages if m.message["Subject"].startswith("dead")]) == 3


def test_cli_lists_and_requeues_dead_letters(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.data_replies.append("550 5.1.1 gone")
    email_id = send_email.delay(**_email("cli dead")).id
    wait_for_status(email_id, {"failed"})

    def neoforge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "neoforge.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip

    listed = neoforge("failed")
    assert listed.returncode == 0 and email_id in listed.stdout and "smtp_5xx" in listed.stdout
    assert neoforge("requeue", email_id).returncode == 0
    wait_for_status(email_id, {"sent"})
    assert neoforge("requeue").returncode != 0  # neither an id nor --all
    assert neoforge("requeue", "--all").stdout.strip() == "requeued 0 email(s)"


def test_scheduled_send(smtp_server: SmtpServer, redis_client: redis.Redis) -> None:
    from tasks import send_email

    send_at = datetime.now(UTC) + timedelta(seconds=1.5)
    email_id = send_email.delay(**_email("later", send_at=send_at.isoformat())).id
    record = wait_for_status(email_id, {"scheduled"})
    assert record["send_at"]
    assert redis_client.zscore("neoforge:scheduled", email_id) is not None
    assert redis_client.llen("transactional") == 0  # held in Redis, not in the broker
    record = wait_for_status(email_id, {"sent"})
    [received] = smtp_server.handler.by_subject("later")
    assert received.at >= send_at.timestamp()


def test_send_at_too_far_ahead_is_refused(api: Any) -> None:
    far = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    response = api.post("/emails", json=_email("far", send_at=far), headers=AUTH)
    assert response.status_code == 422
    naive = api.post("/emails", json=_email("naive", send_at="2030-01-01T00:00:00"), headers=AUTH)
    assert naive.status_code == 422


def test_long_retry_waits_in_redis_not_in_the_broker(
    smtp_server: SmtpServer, settings_env: Any, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    # Visibility 5 s: the broker may hold 1 s; a 1.2-2.4 s backoff goes to the scheduler.
    settings_env(BROKER_VISIBILITY_TIMEOUT="5", EMAIL_TASK_TIME_LIMIT="2", EMAIL_RETRY_BACKOFF="2.4",
                 EMAIL_RETRY_BACKOFF_MAX="2.4")  # fmt: skip
    smtp_server.handler.data_replies.append("451 4.3.2 later")
    email_id = send_email.delay(**_email("long retry")).id
    wait_until(lambda: redis_client.zscore("neoforge:scheduled", email_id) is not None, 10, "scheduled retry")
    record = wait_for_status(email_id, {"sent"})
    assert record["attempts"] == 2
    assert redis_client.zscore("neoforge:scheduled", email_id) is None


def test_transactional_overtakes_bulk(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.data_delay = 0.01
    bulk = [send_email.delay(**_email(f"bulk {i}", priority="bulk")).id for i in range(150)]

    def bulk_sent() -> int:
        return len([m for m in smtp_server.handler.messages if m.message["Subject"].startswith("bulk")])

    before = bulk_sent()
    urgent = send_email.delay(**_email("urgent")).id
    wait_for_status(urgent, {"sent"}, timeout=30)
    # At most the bulk email in hand (and one more fetched) went out ahead of it.
    assert bulk_sent() - before <= 3, (before, bulk_sent())
    assert bulk_sent() < 140
    for email_id in bulk[-5:]:
        wait_for_status(email_id, {"sent"}, timeout=60)


def test_expired_email_is_never_sent(smtp_server: SmtpServer, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(EMAIL_RETRY_BACKOFF="3", EMAIL_RETRY_BACKOFF_MAX="3")
    smtp_server.handler.data_replies.append("451 4.3.2 later")
    expires = datetime.now(UTC) + timedelta(seconds=1)
    email_id = send_email.delay(**_email("stale code", expires_at=expires.isoformat())).id
    record = wait_for_status(email_id, {"expired"}, timeout=15)
    assert record["attempts"] == 1
    assert smtp_server.handler.by_subject("stale code") == []


def test_a_leased_email_waits_for_its_sender(smtp_server: SmtpServer, redis_client: redis.Redis) -> None:
    from tasks import send_email

    # Another (live, remote) sender holds the lease for 1.5 s: we wait, then send once.
    result = send_email.apply_async(kwargs=_email("leased"), queue="parked")
    redis_client.set(f"neoforge:email:{result.id}:lease", "elsewhere|1|x", px=1500)
    redis_client.delete("parked")
    send_email.apply_async((result.id,), queue="transactional")  # a second message for the same email
    record = wait_for_status(result.id, {"sent"})
    [received] = smtp_server.handler.by_subject("leased")
    assert record["attempts"] == 1
    assert json.loads(redis_client.get(f"celery-task-meta-{result.id}") or "{}").get("status") == "SUCCESS"
    assert received.at > time.time() - 10
