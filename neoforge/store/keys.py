"""Every Redis key NeoForge Mail writes, named here and nowhere else.

Keys (all under ``neoforge:``):

- ``email:{id}``           hash: status, attempts, last error, timestamps, ...
- ``email:{id}:payload``   the validated request as JSON (zlib + base64 if long), until sent
- ``email:{id}:attempts``  list: one JSON entry per delivery attempt (and requeue)
- ``email:{id}:lease``     who is sending it right now (expires on its own); the record's
                             ``fence`` field counts the takes, and every write of an attempt checks it
- ``alive:{host}|{pid}``   a worker process's heartbeat (expires unless refreshed): its leases hold
- ``failed``               sorted set: failed email ids by time of failure (dead letters)
- ``scheduled``            sorted set: email ids by the time they are due in the broker
- ``pending``              sorted set: published, unfinished email ids by when their latest message
                             was published (a bulk batch waiting for a slot is published again)
- ``idem:{sha256}``        the email id queued under an idempotency key
- ``to:{sha256}``          sorted set: ids of the emails to one address by creation time (for erasure),
                             trimmed at each write to EMAIL_STATUS_TTL + 31 days
- ``rcpt:{sha256}``        the same as a hash, written before that index: read and erased only
- ``batch:{id}``, ``batch:{id}:emails``  a bulk send: its size, and its emails' ids in order
- ``metrics``              hash: counters for Prometheus, shared by every process
- ``metrics:latency``, ``metrics:send_duration``  hashes: histogram buckets
- ``workers``              sorted set: worker host names by last heartbeat
- ``rate:{sha256}:{minute}:requests|recipients|reads``  per API key counters
- ``scheduler:lock``, ``recovery:lock``  one sweeper at a time
- ``smtp:paused``, ``smtp:probe``  sending paused after a setup failure, and who probes the server
- ``minute:{n}``           hash: sent / failed / retried in minute N since the epoch (kept two hours)
- ``console:secret``       the console's session signing key when CONSOLE_SECRET is unset
- ``console:signin:{sha256}``  sorted set: times of one client address's failed console sign-ins
- ``pace:{provider}``, ``pace:domain:{domain}``  outbound rate limits' token buckets (neoforge/pacing.py)
- ``provider:{name}:circuit``, ``provider:{name}:probe``  a provider's circuit breaker (neoforge/providers.py)
- ``suppressed:{sha256}``  hash: one address's suppression entries, by scope ("*" or a list id)
- ``suppressed``, ``suppressed:expiry``  sorted sets of ``{sha256}|{scope}``: by time added, by expiry
- ``webhooks:failed``      list: webhook deliveries that gave up (dead letters of events)

kombu's own keys (queues, ``unacked``) are read in neoforge/broker.py only.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ALIVE",
    "CONSOLE_SECRET",
    "FAILED",
    "LATENCY",
    "METRICS",
    "MINUTE_TTL",
    "PENDING",
    "PREFIX",
    "RECOVERY_LOCK",
    "SCHEDULED",
    "SCHEDULER_LOCK",
    "SEND_DURATION",
    "SMTP_PAUSED",
    "SMTP_PROBE",
    "SUPPRESSED",
    "SUPPRESSED_EXPIRY",
    "WEBHOOKS_FAILED",
    "WORKERS",
    "address_digest",
    "attempts_key",
    "batch_emails_key",
    "batch_key",
    "circuit_keys",
    "domain_bucket_key",
    "email_key",
    "idempotency_key",
    "lease_key",
    "legacy_recipient_key",
    "minute_key",
    "payload_key",
    "provider_bucket_key",
    "rate_keys",
    "read_rate_key",
    "recipient_key",
    "signin_key",
    "suppressed_key",
]

PREFIX = "neoforge:"
FAILED = f"{PREFIX}failed"
SCHEDULED = f"{PREFIX}scheduled"
PENDING = f"{PREFIX}pending"
METRICS = f"{PREFIX}metrics"
LATENCY = f"{PREFIX}metrics:latency"
SEND_DURATION = f"{PREFIX}metrics:send_duration"
WORKERS = f"{PREFIX}workers"
SCHEDULER_LOCK = f"{PREFIX}scheduler:lock"
RECOVERY_LOCK = f"{PREFIX}recovery:lock"
SMTP_PAUSED = f"{PREFIX}smtp:paused"
SMTP_PROBE = f"{PREFIX}smtp:probe"
CONSOLE_SECRET = f"{PREFIX}console:secret"
MINUTE_TTL = 7200  # per-minute counters outlive the console's one-hour chart
SUPPRESSED = f"{PREFIX}suppressed"
SUPPRESSED_EXPIRY = f"{PREFIX}suppressed:expiry"
WEBHOOKS_FAILED = f"{PREFIX}webhooks:failed"
ALIVE = f"{PREFIX}alive:"  # + a process's name: its heartbeat (lua/begin.lua builds the same names)


def email_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}"


def payload_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:payload"


def attempts_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:attempts"


def lease_key(email_id: str) -> str:
    return f"{PREFIX}email:{email_id}:lease"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def batch_emails_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:emails"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def address_digest(address: str) -> str:
    """How an address is named in Redis: never in clear (SHA-256 of its lower-case form)."""
    return _digest(address.lower())


def recipient_key(address: str) -> str:
    # Hashed: the index lets us erase a person's emails without their address in a key name.
    return f"{PREFIX}to:{address_digest(address)}"


def legacy_recipient_key(address: str) -> str:
    """The index of ADDRESS as a hash, before it was a trimmed sorted set: it expires on its own."""
    return f"{PREFIX}rcpt:{address_digest(address)}"


def suppressed_key(digest: str) -> str:
    """The suppression entries of the address whose ``address_digest`` is DIGEST."""
    return f"{PREFIX}suppressed:{digest}"


def idempotency_key(key: str) -> str:
    # Hashed: the caller's key may be long or carry personal data.
    return f"{PREFIX}idem:{_digest(key)}"


def _rate_base(api_key: str, minute: int) -> str:
    return f"{PREFIX}rate:{_digest(api_key)[:32]}:{minute}"


def rate_keys(api_key: str, minute: int) -> tuple[str, str]:
    """The request and recipient counters of API_KEY for one minute (never the key itself)."""
    base = _rate_base(api_key, minute)
    return f"{base}:requests", f"{base}:recipients"


def read_rate_key(api_key: str, minute: int) -> str:
    """The counter of API_KEY's reads (status, listings) for one minute."""
    return f"{_rate_base(api_key, minute)}:reads"


def minute_key(minute: int) -> str:
    """Counts of sent, failed and retried emails in MINUTE (epoch seconds // 60)."""
    return f"{PREFIX}minute:{minute}"


def signin_key(client: str) -> str:
    """The times of failed console sign-ins from CLIENT (an address, hashed)."""
    return f"{PREFIX}console:signin:{_digest(client)[:32]}"


def provider_bucket_key(provider: str) -> str:
    """The token bucket (and slow-down hold) of one SMTP provider, by its name (never credentials)."""
    return f"{PREFIX}pace:{provider}"


def domain_bucket_key(domain: str) -> str:
    """The token bucket of one recipient domain named in EMAIL_DOMAIN_LIMITS."""
    return f"{PREFIX}pace:domain:{domain}"


def circuit_keys(provider: str) -> tuple[str, str]:
    """A provider's circuit hash and its probe lock."""
    return f"{PREFIX}provider:{provider}:circuit", f"{PREFIX}provider:{provider}:probe"
