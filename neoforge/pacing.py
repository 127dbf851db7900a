"""Outbound rate limits shared by every worker on every host: token buckets in Redis.

Each provider has a bucket (its SMTP_URLS ``rate``, or SMTP_RATE_LIMIT), and
each domain named in EMAIL_DOMAIN_LIMITS has one more. Taking tokens is one
script call (neoforge/store/lua/pace.lua) per email, or per batch for bulk
mail, timed by the Redis server's clock. An email that finds a bucket empty
is told how long to wait: it goes back to Celery with that countdown (no
thread held, no retry spent). Transactional mail comes first: while one
waits, bulk takes nothing.

A "too much mail" reply holds every sender of that provider for
SMTP_THROTTLE_SECONDS and then halves its rate for a while
(neoforge/store/lua/throttle.lua): the whole sender slows down, instead of
each email backing off alone and spending its retries inside the
provider's window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from neoforge.endpoints import Endpoint
from neoforge.logs import log_event
from neoforge.rates import Rate
from neoforge.settings import Settings
from neoforge.store.keys import METRICS, domain_bucket_key, provider_bucket_key
from neoforge.store.scripts import Scripts

__all__ = ["Pacer"]

logger = logging.getLogger(__name__)


class Pacer:
    """This process's handle on the shared buckets."""

    def __init__(self, client: redis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.client = client
        self.scripts = scripts
        self.settings = settings
        self.domains = settings.domain_limits()

    def limited(self, addresses: Iterable[str]) -> list[str]:
        """The domains of ADDRESSES that EMAIL_DOMAIN_LIMITS limits (each once, sorted)."""
        if not self.domains:
            return []
        found = {address.rpartition("@")[2].lower() for address in addresses}
        return sorted(found & self.domains.keys())

    def take(
        self,
        endpoint: Endpoint | None,
        priority: str,
        domains: Iterable[str] = (),
        count: int = 1,
        partial: bool = False,
    ) -> tuple[int, float]:
        """Take COUNT tokens from ENDPOINT's bucket (None: none) and the DOMAINS' buckets.

        Returns (tokens granted, seconds to wait before asking for the rest).
        Without PARTIAL it is all COUNT or none. One round trip.
        """
        keys: list[str] = []
        args: list[str | int | float] = [
            count,
            "bulk" if priority == "bulk" else "transactional",
            int(partial),
        ]
        args.append(endpoint.name if endpoint is not None else "")
        buckets: list[tuple[str, Rate | None]] = []
        if endpoint is not None:
            buckets.append((provider_bucket_key(endpoint.name), endpoint.rate))
        buckets += [(domain_bucket_key(domain), self.domains[domain]) for domain in domains]
        if not buckets:
            return count, 0.0
        for key, rate in buckets:
            keys.append(key)
            args += [rate.per_second, rate.burst] if rate is not None else [0, 0]
        granted, wait = self.scripts.pace(keys=[*keys, METRICS], args=args)
        return int(granted), float(wait)

    def throttle(self, endpoint: Endpoint) -> float:
        """ENDPOINT said "too much mail": hold all its senders, then slow it down; seconds held."""
        s = self.settings
        left = float(
            self.scripts.throttle(
                keys=[provider_bucket_key(endpoint.name), METRICS],
                args=[s.smtp_throttle_seconds, s.smtp_throttle_recover_seconds, endpoint.name],
            )
        )
        log_event(logger, "smtp.throttled", logging.WARNING, provider=endpoint.name, seconds=round(left, 1))
        return left
