"""The sending policy's Lua scripts (pace, throttle, circuit) run directly against a real Redis; the pacer.

Rates here are slow (one token a minute), so the few milliseconds between two
calls change no answer: every figure checked is the script's arithmetic on
the Redis server's clock, not a measured time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from neoforge.errors import ConfigurationError
from neoforge.rates import parse_domain_limits, parse_rate
from neoforge.runtime import current
from neoforge.settings import get_settings
from neoforge.store.keys import METRICS, circuit_keys, domain_bucket_key, provider_bucket_key
from neoforge.store.scripts import Scripts

PER_MINUTE = 1 / 60
BUCKET = provider_bucket_key("relay:587")


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts(redis_client)


def _pace(
    scripts: Scripts, n: int = 1, priority: str = "transactional", partial: bool = False,
    buckets: tuple[tuple[str, float, float], ...] = ((BUCKET, PER_MINUTE, 1),), label: str = "relay:587",
) -> tuple[int, float]:  # fmt: skip
    args: list[str | int | float] = [n, priority, int(partial), label]
    for _, rate, burst in buckets:
        args += [rate, burst]
    granted, wait = scripts.pace(keys=[*(b[0] for b in buckets), METRICS], args=args)
    return int(granted), float(wait)


def test_a_bucket_grants_its_burst_then_spaces_the_waiters(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    assert _pace(scripts) == (1, 0.0)
    granted, wait = _pace(scripts)
    assert granted == 0 and 59 < wait <= 60
    # The next waiter is told to come back one token later, not at the same moment.
    granted, wait = _pace(scripts)
    assert granted == 0 and 119 < wait <= 120
    assert redis_client.hget(METRICS, "provider_attempts|relay:587") == "1"
    assert redis_client.hget(METRICS, "paced|transactional") == "2"


def test_tokens_come_back_by_the_redis_servers_clock(scripts: Scripts, redis_client: redis.Redis) -> None:
    assert _pace(scripts)[0] == 1
    seconds, _ = redis_client.time()
    # As if the last take were two minutes ago on the server: the bucket is full again (burst 1).
    redis_client.hset(BUCKET, mapping={"ts": seconds - 120, "tx_backlog": 0})
    assert _pace(scripts)[0] == 1
    assert _pace(scripts)[0] == 0


def test_a_batch_takes_what_there_is_or_nothing(scripts: Scripts) -> None:
    five = ((BUCKET, PER_MINUTE, 5),)
    assert _pace(scripts, 8, "bulk", partial=False, buckets=five)[0] == 0
    granted, wait = _pace(scripts, 8, "bulk", partial=True, buckets=five)
    assert granted == 5 and wait > 0


def test_transactional_mail_comes_before_bulk(scripts: Scripts, redis_client: redis.Redis) -> None:
    three = ((BUCKET, PER_MINUTE, 3),)
    assert _pace(scripts, 3, buckets=three)[0] == 3
    tx_granted, tx_wait = _pace(scripts, buckets=three)
    assert tx_granted == 0
    # Tokens back (as if a minute passed) while the transactional email still waits: bulk gets none.
    redis_client.hset(BUCKET, "tokens", 2)
    granted, bulk_wait = _pace(scripts, 1, "bulk", buckets=three)
    assert granted == 0 and bulk_wait >= tx_wait
    assert _pace(scripts, buckets=three)[0] == 1


def test_every_bucket_must_have_a_token(scripts: Scripts) -> None:
    domain = domain_bucket_key("gmail.com")
    both = ((BUCKET, 0, 0), (domain, PER_MINUTE, 1))  # the provider has no limit, the domain has
    assert _pace(scripts, buckets=both) == (1, 0.0)
    granted, wait = _pace(scripts, buckets=both)
    assert granted == 0 and 59 < wait <= 60
    assert _pace(scripts, buckets=((BUCKET, 0, 0),)) == (1, 0.0)


def test_too_much_mail_holds_every_sender_then_halves_the_rate(
    scripts: Scripts, redis_client: redis.Redis
) -> None:
    assert float(scripts.throttle(keys=[BUCKET, METRICS], args=[30, 300, "relay:587"])) == pytest.approx(
        30, abs=1
    )
    # Held even with no rate limit configured; a second reply in the hold extends nothing.
    granted, wait = _pace(scripts, buckets=((BUCKET, 0, 0),))
    assert granted == 0 and 29 < wait <= 30
    assert float(scripts.throttle(keys=[BUCKET, METRICS], args=[30, 300, "relay:587"])) <= 30
    assert redis_client.hget(BUCKET, "factor") == "0.5"
    assert redis_client.hget(METRICS, "throttled|relay:587") == "1"


def test_a_circuit_opens_on_a_failure_or_a_storm(scripts: Scripts, redis_client: redis.Redis) -> None:
    circuit, probe = circuit_keys("relay:587")

    def fail(threshold: int, error_class: str) -> tuple[int, float]:
        is_open, seconds = scripts.circuit(
            keys=[circuit, probe, METRICS], args=[threshold, 60, 30, 600, "relay:587", error_class]
        )
        return int(is_open), float(seconds)

    assert fail(3, "smtp_4xx") == (0, 0.0)
    assert fail(3, "smtp_4xx") == (0, 0.0)
    redis_client.set(probe, "someone")
    assert fail(3, "smtp_4xx") == (1, 30.0)
    assert not redis_client.exists(probe)
    is_open, left = fail(1, "connection")  # still open: counts nothing more
    assert is_open == 1 and 29 < left <= 30
    assert redis_client.hget(METRICS, "failover|relay:587") == "1"
    assert redis_client.hget(METRICS, "provider_failures|relay:587|smtp_4xx") == "3"
    # Its time is up and a probe fails: open again, twice as long.
    redis_client.hset(circuit, "until", 0)
    assert fail(1, "connection") == (1, 60.0)


def test_rates_and_domain_limits_parse_or_say_why() -> None:
    assert parse_rate("14/s").per_second == 14 and parse_rate("14/s").burst == 14
    assert parse_rate("1000/h").burst == 1
    assert parse_rate("20/5s").per_second == 4
    assert parse_rate("20/m").per_second == pytest.approx(1 / 3)
    for bad in ("fast", "0/s", "10/y", "-1/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
    assert set(parse_domain_limits("gmail.com=20/s, Yahoo.com=5/s")) == {"gmail.com", "yahoo.com"}
    with pytest.raises(ValueError, match="DOMAIN=RATE"):
        parse_domain_limits("gmail.com")


def test_domain_limits_apply_to_the_recipients_domains_only(settings_env: Callable[..., None]) -> None:
    settings_env(EMAIL_DOMAIN_LIMITS="slow.example.com=1/m")
    pacer = current().pacer
    addresses = ["a@Slow.Example.com", "b@fast.example.com"]
    assert pacer.limited(addresses) == ["slow.example.com"]
    assert pacer.take(None, "transactional", pacer.limited(addresses)) == (1, 0.0)
    granted, wait = pacer.take(None, "transactional", pacer.limited(addresses))
    assert granted == 0 and 59 < wait <= 60
    assert pacer.take(None, "transactional", pacer.limited(["c@fast.example.com"])) == (1, 0.0)
    settings_env(EMAIL_DOMAIN_LIMITS="slow.example.com")
    with pytest.raises(ConfigurationError, match="EMAIL_DOMAIN_LIMITS"):
        get_settings()
