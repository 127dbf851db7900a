"""Reads (status polling, listings) have their own per-key allowance; writes keep theirs."""

from __future__ import annotations

from typing import Any

import redis

from tests.conftest import AUTH

READS = ["/emails/{id}", "/emails?status=failed", "/batches/no-such-batch"]


def _counted(client: redis.Redis, kind: str) -> int:
    # Summed over every minute: the test may straddle the turn of one.
    return sum(int(client.get(key) or 0) for key in client.scan_iter(f"neoforge:rate:*:{kind}"))


def _queue(api: Any) -> Any:
    return api.post("/emails", json={"to": ["r@example.com"], "subject": "reads", "text": "x"}, headers=AUTH)


def test_status_reads_do_not_use_up_requests(api: Any, settings_env: Any, redis_client: redis.Redis) -> None:
    settings_env(API_RATE_LIMIT_REQUESTS="5")
    queued = _queue(api)
    assert queued.status_code == 202
    email_id = queued.json()["id"]
    codes = [api.get(f"/emails/{email_id}", headers=AUTH).status_code for _ in range(100)]
    assert codes == [200] * 100
    assert api.get("/emails?status=failed", headers=AUTH).status_code == 200
    assert api.get("/batches/no-such-batch", headers=AUTH).status_code == 404
    assert _counted(redis_client, "requests") == 1
    assert _counted(redis_client, "reads") == 102
    # Writes keep their own limit: four more this minute, then 429 (11 writes see it even
    # across the turn of a minute).
    writes = [_queue(api).status_code for _ in range(11)]
    assert 429 in writes, writes
    assert writes.index(429) >= 4 and set(writes[: writes.index(429)]) == {202}, writes


def test_reads_past_their_limit_answer_429(api: Any, settings_env: Any) -> None:
    settings_env(API_RATE_LIMIT_READS="10")
    email_id = _queue(api).json()["id"]
    answers = [api.get(READS[i % 3].format(id=email_id), headers=AUTH) for i in range(21)]
    codes = [a.status_code for a in answers]
    # At most one turn of the minute in 21 requests: some minute sees an 11th read.
    assert 429 in codes, codes
    first = codes.index(429)
    assert first >= 10 and set(codes[:first]) <= {200, 404}, codes
    assert 1 <= int(answers[first].headers["Retry-After"]) <= 60
    assert "reads" in answers[first].json()["detail"]
    # Writes are still allowed.
    assert _queue(api).status_code == 202
