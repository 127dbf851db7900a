"""Each Lua script of neoforge/store/lua/, run directly against a real Redis with its documented keys."""

from __future__ import annotations

import json
import time

import pytest
import redis

from neoforge.store import StatusStore
from neoforge.store.keys import (
    ALIVE,
    FAILED,
    METRICS,
    PENDING,
    SCHEDULED,
    attempts_key,
    email_key,
    lease_key,
    legacy_recipient_key,
    payload_key,
    recipient_key,
)
from neoforge.store.scripts import NAMES, Scripts, source


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts(redis_client)


def _create(
    scripts: Scripts, email_id: str, *, idem: str = "", due: str = "", rcpt: tuple[str, ...] = (),
    life: int = 3600, message: tuple[str, str] = ("", ""),
    charge: tuple[str, str, int, int] = ("", "", 0, 0),
) -> list[str]:  # fmt: skip
    counters, limits = charge[:2], charge[2:]
    keys = [email_key(email_id), payload_key(email_id), idem, SCHEDULED, PENDING, METRICS, message[0],
            *counters, *rcpt]  # fmt: skip
    args = [email_id, "{}", 60, due, life, message[1], 1, len(rcpt), *limits,
            "status", "scheduled" if due else "queued", "priority", "bulk"]  # fmt: skip
    return [str(v) for v in scripts.create(keys=keys, args=args)]


def test_every_script_is_documented_and_loaded() -> None:
    for name in NAMES:
        text = source(name)
        assert text.startswith("--"), name
        assert "KEYS" in text and "Returns" in text, name


def test_create_records_once_and_honours_idempotency(scripts: Scripts, redis_client: redis.Redis) -> None:
    assert _create(scripts, "a", idem="neoforge:idem:k", rcpt=("neoforge:rcpt:x",)) == ["a", "1"]
    assert redis_client.hget(email_key("a"), "status") == "queued"
    assert redis_client.zscore(PENDING, "a") is not None
    assert redis_client.hget(METRICS, "queued|bulk") == "1"
    assert redis_client.zscore("neoforge:rcpt:x", "a") is not None
    # The same id again: nothing written, not counted twice.
    assert _create(scripts, "a") == ["a", "0"]
    assert redis_client.hget(METRICS, "queued|bulk") == "1"
    # Another id under a key already taken: the earlier id, nothing written.
    assert _create(scripts, "b", idem="neoforge:idem:k") == ["a", "0"]
    assert not redis_client.exists(email_key("b"))
    # Due later: the scheduled set, not the pending index.
    assert _create(scripts, "c", due="2000000000") == ["c", "1"]
    assert redis_client.zscore(SCHEDULED, "c") == 2000000000
    assert redis_client.zscore(PENDING, "c") is None


def test_recipient_index_drops_entries_older_than_its_life(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    """Someone who gets mail all the time: each write trims what is older than the index's life."""
    store = StatusStore(redis_client, 60)
    index = recipient_key("often@example.com")
    _create(scripts, "first", rcpt=(index,), life=1)
    deadline, number = time.monotonic() + 15, 0
    while "first" in store.emails_to("often@example.com"):
        assert time.monotonic() < deadline, "the oldest entry outlived the index's life"
        number += 1
        _create(scripts, f"later{number}", rcpt=(index,), life=1)
        time.sleep(0.1)
    # Trimmed, not expired as a whole: the last second's entries are all there.
    found = store.emails_to("often@example.com")
    assert len(found) >= 2 and f"later{number}" in found
    assert 0 < redis_client.ttl(index) <= 1


def test_create_pushes_the_message_and_charges_in_the_same_call(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    charge = ("rate:req", "rate:rcpt", 2, 10)
    assert _create(scripts, "a", message=("q", "m-a"), charge=charge, rcpt=("r1",)) == ["a", "1"]
    assert redis_client.lrange("q", 0, -1) == ["m-a"]
    # A duplicate is charged but pushes nothing; a scheduled email's message waits with it.
    assert _create(scripts, "a", message=("q", "m-a2"), charge=charge) == ["a", "0"]
    assert redis_client.lrange("q", 0, -1) == ["m-a"]
    # Past the request limit: counted, nothing recorded or pushed.
    assert _create(scripts, "b", message=("q", "m-b"), charge=charge) == ["", "-1", "3", "1"]
    assert not redis_client.exists(email_key("b"))
    assert redis_client.lrange("q", 0, -1) == ["m-a"]
    assert _create(scripts, "c", due="2000000000", message=("q", "m-c")) == ["c", "1"]
    assert redis_client.lrange("q", 0, -1) == ["m-a"]


def _begin(scripts: Scripts, email_id: str, holder: str, break_lease: str = "") -> list[object]:
    keys = [email_key(email_id), payload_key(email_id), lease_key(email_id), PENDING, METRICS]
    args = ["now", "w1", holder, 10_000, 10_000, break_lease, email_id, ALIVE]
    return list(scripts.begin(keys=keys, args=args))


def test_begin_leases_once_and_reports_the_holder(scripts: Scripts, redis_client: redis.Redis) -> None:
    assert _begin(scripts, "nothing", "h1") == ["missing", None, 0]
    _create(scripts, "a")
    first = _begin(scripts, "a", "h1")
    assert first[0] == "sending" and first[1] == "{}" and first[2] == 1
    second = _begin(scripts, "a", "h2")
    assert second[0] == "leased" and second[1] == "h1"
    # Breaking a dead holder's lease gives the next attempt.
    third = _begin(scripts, "a", "h2", break_lease="h1")
    assert third[0] == "sending" and third[2] == 2
    # A sender that went away after DATA began: never sent again.
    redis_client.hset(email_key("a"), "data_attempt", 2)
    redis_client.delete(lease_key("a"))
    assert _begin(scripts, "a", "h3")[0] == "unknown"


def test_begin_expires_and_cancels(scripts: Scripts, redis_client: redis.Redis) -> None:
    _create(scripts, "old")
    redis_client.hset(email_key("old"), "expires_ts", "999.0")
    assert _begin(scripts, "old", "h")[0] == "expired"
    assert redis_client.hget(METRICS, "expired|bulk") == "1"
    assert not redis_client.exists(payload_key("old"))
    _create(scripts, "purged")
    redis_client.delete(payload_key("purged"))
    assert _begin(scripts, "purged", "h")[0] == "cancelled"


def test_finish_new_records_failed_or_expired_once(scripts: Scripts, redis_client: redis.Redis) -> None:
    def finish(email_id: str, index: str, counter: str) -> int:
        keys = [email_key(email_id), f"{email_key(email_id)}:attempts", index, METRICS]
        args = [email_id, 1000.0, json.dumps({"outcome": "x"}), counter, 3600, "status", "failed"]
        return int(scripts.finish_new(keys=keys, args=args))

    assert finish("bad", FAILED, "failed|transactional|invalid") == 1
    assert redis_client.zscore(FAILED, "bad") == 1000.0
    assert redis_client.ttl(email_key("bad")) > 0
    assert finish("bad", FAILED, "failed|transactional|invalid") == 0
    assert redis_client.hget(METRICS, "failed|transactional|invalid") == "1"
    assert finish("late", "", "expired|transactional") == 1
    assert redis_client.zscore(FAILED, "late") is None


def test_requeue_only_failed_with_content(scripts: Scripts, redis_client: redis.Redis) -> None:
    def requeue(email_id: str) -> int:
        keys = [
            email_key(email_id),
            f"{email_key(email_id)}:attempts",
            FAILED,
            payload_key(email_id),
            PENDING,
        ]
        return int(scripts.requeue(keys=keys, args=[email_id, "now", "{}"]))

    _create(scripts, "a")
    assert requeue("a") == 0  # queued, not failed
    redis_client.hset(email_key("a"), mapping={"status": "failed", "attempts": 3, "data_attempt": 3})
    redis_client.zadd(FAILED, {"a": 1})
    assert requeue("a") == 1
    record = redis_client.hgetall(email_key("a"))
    assert record["status"] == "queued" and record["attempts"] == "0" and "data_attempt" not in record
    assert redis_client.zscore(FAILED, "a") is None
    redis_client.hset(email_key("a"), "status", "failed")
    redis_client.delete(payload_key("a"))
    assert requeue("a") == 0  # purged: nothing to send


def test_release_and_purge(scripts: Scripts, redis_client: redis.Redis) -> None:
    assert scripts.release(keys=[email_key("none")], args=["now"]) is None
    _create(scripts, "s", due="1")
    redis_client.hset(email_key("s"), mapping={"queue": "bulk", "celery": '{"link": []}'})
    assert scripts.release(keys=[email_key("s")], args=["now"]) == ["queued", "bulk", '{"link": []}']
    keys = [email_key("s"), payload_key("s"), PENDING, SCHEDULED, lease_key("s")]
    assert scripts.purge(keys=keys, args=["s", "now"]) == "cancelled"
    assert not redis_client.exists(payload_key("s"))
    assert scripts.purge(keys=[email_key("none"), "", PENDING, SCHEDULED, ""], args=["none", "now"]) is None


def test_charge_counts_both_and_expires(scripts: Scripts, redis_client: redis.Redis) -> None:
    keys = ["neoforge:rate:t:1:requests", "neoforge:rate:t:1:recipients"]
    assert scripts.charge(keys=keys, args=[1, 5]) == [1, 5]
    assert scripts.charge(keys=keys, args=[1, 2]) == [2, 7]
    assert 0 < redis_client.ttl(keys[0]) <= 120


def test_unplaced_reports_the_unaccounted_and_drops_the_finished(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    for email_id, status in [("q", "queued"), ("s", "sent"), ("r", "retrying"), ("l", "sending"),
                             ("h", "scheduled")]:  # fmt: skip
        redis_client.hset(email_key(email_id), mapping={"status": status, "queue": "bulk"})
        redis_client.zadd(PENDING, {email_id: 1})
    redis_client.zadd(PENDING, {"gone": 1})
    redis_client.hset(email_key("q"), "celery", '{"link": []}')
    redis_client.zadd(SCHEDULED, {"r": 2})
    redis_client.set(lease_key("l"), "w|1")
    ids = ["q", "s", "r", "l", "h", "gone"]
    keys = [PENDING, SCHEDULED]
    for email_id in ids:
        keys += [email_key(email_id), lease_key(email_id)]
    found = scripts.unplaced(keys=keys, args=["sent failed expired cancelled", *ids])
    assert found == ["q", "queued", "bulk", '{"link": []}']
    assert sorted(redis_client.zrange(PENDING, 0, -1)) == ["h", "l", "q", "r"]


def test_begin_takes_over_a_silent_holder_and_fences_it(scripts: Scripts, redis_client: redis.Redis) -> None:
    _create(scripts, "a")
    first = _begin(scripts, "a", "hostA|1|t1")
    assert first[0] == "sending" and first[7] == 1 and first[8] == ""
    assert redis_client.pttl(ALIVE + "hostA|1") > 0  # the take renews its own process's heartbeat
    assert _begin(scripts, "a", "hostB|2|t2")[0] == "leased"
    # hostA's process stops beating (stopped, cut off): any host takes the lease over at once.
    redis_client.delete(ALIVE + "hostA|1")
    second = _begin(scripts, "a", "hostB|2|t2")
    assert second[0] == "sending" and second[7] == 2 and second[8] == "hostA|1|t1"
    assert redis_client.get(lease_key("a")) == "hostB|2|t2"

    def mark_data(fence: str) -> int:
        return int(scripts.mark_data(keys=[email_key("a"), METRICS], args=[fence, 1]))

    def settle(fence: str) -> int:
        keys = [
            email_key("a"),
            attempts_key("a"),
            payload_key("a"),
            lease_key("a"),
            PENDING,
            FAILED,
            METRICS,
            "neoforge:minute:1",
        ]
        fields, counters = json.dumps({"status": "failed"}), '["failed|bulk|x"]'
        args = ["a", fence, "failed", fields, "[]", 0, '{"x":1}', counters, "failed", 60, "dead", 60]
        return int(scripts.settle(keys=keys, args=args))

    # The first holder comes back: its DATA mark and its outcome are refused, and counted.
    assert mark_data("1|hostA|1|t1") == 0 and settle("1|hostA|1|t1") == 0
    assert redis_client.hget(METRICS, "fenced|data") == "1"
    assert redis_client.hget(METRICS, "fenced|failed") == "1"
    assert redis_client.hget(email_key("a"), "status") == "sending"
    assert redis_client.get(lease_key("a")) == "hostB|2|t2" and not redis_client.exists(attempts_key("a"))
    # The holder now writes.
    # The same count from another holder (a failover lost writes, then another took it): refused.
    assert mark_data("2|hostC|3|t3") == 0
    assert mark_data("2|hostB|2|t2") == 1 and redis_client.hget(email_key("a"), "data_attempt") == "1"
    # A count above the record's: Redis lost this attempt's own take, nobody took it since.
    assert mark_data("3|hostB|2|t4") == 1
    assert settle("2|hostB|2|t2") == 1 and redis_client.hget(email_key("a"), "status") == "failed"
    assert redis_client.zscore(FAILED, "a") is not None and not redis_client.exists(lease_key("a"))


def test_sent_is_refused_to_a_stale_fence(scripts: Scripts, redis_client: redis.Redis) -> None:
    _create(scripts, "a")
    _begin(scripts, "a", "hostA|1|t1")
    redis_client.delete(ALIVE + "hostA|1")
    _begin(scripts, "a", "hostB|2|t2")

    def sent(fence: str) -> int:
        keys = [
            email_key("a"),
            attempts_key("a"),
            payload_key("a"),
            lease_key("a"),
            PENDING,
            FAILED,
            METRICS,
            "neoforge:metrics:latency",
            "neoforge:metrics:send_duration",
            "neoforge:minute:1",
        ]
        args = ["a", '{"status": "sent"}', "{}", "sent|bulk", "1", 0.1, "1", 0.1, 60, 60, "", fence]
        return int(scripts.sent(keys=keys, args=args))

    assert sent("1|hostA|1|t1") == -1
    assert redis_client.hget(METRICS, "fenced|sent") == "1"
    assert redis_client.exists(payload_key("a")) and redis_client.get(lease_key("a")) == "hostB|2|t2"
    assert sent("2|hostB|2|t2") == 1 and redis_client.hget(email_key("a"), "status") == "sent"


def test_a_sent_record_takes_its_compact_form(scripts: Scripts, redis_client: redis.Redis) -> None:
    """Once sent, the record keeps short values only (a compact hash in Redis) and reads back whole."""
    store = StatusStore(redis_client, 60)
    _create(scripts, "a")
    redis_client.hset(email_key("a"), mapping={"id": "a", "worker": "w1@host", "published_ts": "1.5"})
    reply = "2.0.0 Ok: queued as 4FgH7kLm2x"
    outcomes = {
        "t0": {"address": "u***@example.com", "outcome": "delivered", "code": 250, "message": reply},
        "t1": {"address": "r***@example.org", "outcome": "rejected", "code": 550, "message": "5.1.1 unknown"},
    }
    entry = {"attempt": 1, "started_at": "s", "finished_at": "f", "duration_ms": 1.0, "worker": "w1@host",
             "outcome": "sent", "smtp_reply": reply, "delivered": "some"}  # fmt: skip
    extra = {"outcomes": json.dumps(outcomes), "delivered": "some"}
    store.mark_sent("a", entry, "bulk", 0.5, extra)
    assert redis_client.hget(email_key("a"), "outcomes") is not None
    one = {"t0": outcomes["t0"]}
    _create(scripts, "b")
    store.mark_sent("b", entry | {"delivered": "all"}, "bulk", 0.5, {"outcomes": json.dumps(one)})
    # Every value under hash-max-listpack-value (64 bytes): not a hash table.
    assert redis_client.object("encoding", email_key("b")) in ("ziplist", "listpack")
    assert not {"id", "worker", "published_ts"} & set(redis_client.hkeys(email_key("a")))
    record = store.get("a")
    assert record is not None and record["id"] == "a" and record["status"] == "sent"
    assert record["outcomes"] == [outcomes["t0"], outcomes["t1"]]
    found = store.get("b")
    assert found is not None and found["outcomes"] == [outcomes["t0"]]


def test_the_recipient_index_written_before_it_was_a_sorted_set_is_still_read_and_erased(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    store = StatusStore(redis_client, 60)
    redis_client.hset(legacy_recipient_key("old@example.com"), "before", "")
    _create(scripts, "after", rcpt=(recipient_key("old@example.com"),))
    assert store.emails_to("old@example.com") == ["after", "before"]
    store.forget_recipient("old@example.com")
    assert store.emails_to("old@example.com") == []
