"""Queueing when Redis cannot be reached: a clear error and nothing left behind."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from neoforge import QueueUnavailable
from neoforge.processes import free_port
from tests.conftest import no_email_left


def test_redis_down_at_enqueue(settings_env: Any, redis_client: redis.Redis, celery_app: Any) -> None:
    from tasks import send_email

    settings_env(REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(QueueUnavailable, match="cannot reach Redis") as caught:
        send_email.delay(to=["a@example.com"], subject="down", text="x")
    assert "hunter2" not in str(caught.value)
    assert no_email_left(redis_client)


def test_publish_fails_and_nothing_is_left(redis_client: redis.Redis, celery_app: Any) -> None:
    """The record is written first, the publish fails, the record is removed again."""
    from kombu import Connection

    from tasks import send_email

    dead = f"redis://127.0.0.1:{free_port()}/0"
    with Connection(dead) as connection:
        producer = celery_app.amqp.Producer(connection)
        with pytest.raises(QueueUnavailable):
            send_email.apply_async(
                kwargs={"to": ["a@example.com"], "subject": "lost?", "text": "x"},
                producer=producer,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
            )
    assert no_email_left(redis_client)
    assert redis_client.llen("transactional") == 0
    assert int(redis_client.hget("neoforge:metrics", "queued|transactional") or 0) == 0


def test_api_answers_503_when_redis_is_down(api: Any, settings_env: Any) -> None:
    from tests.conftest import AUTH

    settings_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = api.post("/emails", json={"to": ["a@example.com"], "subject": "s", "text": "x"}, headers=AUTH)
    assert response.status_code == 503
    assert "cannot reach Redis" in response.json()["detail"]
    assert api.get("/health").status_code == 503


def test_redis_full_is_a_clear_503_and_nothing_is_queued(api: Any, redis_client: redis.Redis) -> None:
    """Redis at maxmemory (noeviction) answers but refuses writes: 503 saying so, never a 500."""
    from neoforge import QueueFull
    from tasks import send_email
    from tests.conftest import AUTH

    email = {"to": ["full@example.com"], "subject": "full", "text": "x"}
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", max(1, used // 2))  # over the limit already
    try:
        response = api.post("/emails", json=email, headers=AUTH)
        assert response.status_code == 503, response.text
        assert "storage is full" in response.json()["detail"]
        health = api.get("/health")
        assert health.status_code == 503 and health.json()["redis"] == "full"
        with pytest.raises(QueueFull, match="storage is full"):
            send_email.delay(**email)
    finally:
        redis_client.config_set("maxmemory", 0)
    assert no_email_left(redis_client)
    assert api.get("/health").status_code == 200
    assert api.post("/emails", json=email, headers=AUTH).status_code == 202


def test_queueing_stops_at_the_headroom_while_redis_still_takes_writes(
    api: Any, redis_client: redis.Redis, settings_env: Any
) -> None:
    """REDIS_MEMORY_HEADROOM of maxmemory is kept for the workers: the API refuses new mail first."""
    from tests.conftest import AUTH

    settings_env(REDIS_MEMORY_HEADROOM="20")
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", int(used / 0.92))  # 92% full: past the headroom, not full
    try:
        email = {"to": ["a@example.com"], "subject": "s", "text": "x"}
        response = api.post("/emails", json=email, headers=AUTH)
        assert response.status_code == 503, response.text
        assert "storage is full" in response.json()["detail"]
        assert api.get("/health").json()["redis"] == "full"
        assert redis_client.set("neoforge:test:room", "a worker's write still fits")
    finally:
        redis_client.config_set("maxmemory", 0)
        redis_client.delete("neoforge:test:room")
    assert no_email_left(redis_client)
