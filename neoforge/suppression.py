"""The suppression list: addresses we no longer send to (hard bounces, unsubscribes, added by hand).

An entry is an address, stored hashed (``address_digest``: its SHA-256, as
the recipient index names it), with a scope: ``*`` for every email, or a
list id (the ``List-Id`` of bulk mail, for unsubscribes), an optional expiry,
a reason and the masked address (``a***@example.com``) to list it by. A
worker asks about every recipient of an email in one pipelined round trip
(``find``); a suppressed recipient is never given to the SMTP server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from neoforge.redact import mask_address
from neoforge.settings import Settings
from neoforge.store.keys import METRICS, SUPPRESSED, SUPPRESSED_EXPIRY, address_digest, suppressed_key

__all__ = [
    "ALL_LISTS", "Entry", "Reason", "add", "add_hashed", "check", "entries", "find", "hard_bounce", "list_id",
    "remove", "suppress_bounces", "sweep",
]  # fmt: skip

ALL_LISTS = "*"
Reason = Literal["bounce", "manual", "unsubscribe"]
_LIST_ID = re.compile(r"<([^<>]+)>\s*$")
# RCPT replies that say the mailbox does not exist (or never can): 5.1.x, or a
# bare 550/551/553. Policy refusals (5.7.x: relay denied, spam) are not about
# the address and do not suppress it.
_BAD_MAILBOX = re.compile(r"\b5\.1\.\d{1,3}\b")
_NO_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True)
class Entry:
    """One suppression: of whom (masked), for which lists, why, since when and until when (0: never ends)."""

    digest: str
    scope: str
    address: str
    reason: str
    added_at: float
    until: float

    def as_dict(self) -> dict[str, Any]:
        scope = None if self.scope == ALL_LISTS else self.scope
        return {"address": self.address, "list_id": scope, "reason": self.reason, "added_at": self.added_at,
                "expires_at": self.until or None}  # fmt: skip

    def active(self, now: float) -> bool:
        return not self.until or self.until > now


def list_id(headers: dict[str, str]) -> str:
    """The list id of an email with these HEADERS: what ``List-Id`` names between <>, or ""."""
    for name, value in headers.items():
        if name.lower() == "list-id":
            found = _LIST_ID.search(value)
            return (found.group(1) if found else value).strip().lower()
    return ""


def hard_bounce(code: int, message: str) -> bool:
    """True when a 5xx RCPT reply says the address itself is bad (550 5.1.1, or 550/551/553 bare)."""
    if not 500 <= code < 600:
        return False
    if _BAD_MAILBOX.search(message):
        return True
    return code in (550, 551, 553) and not _NO_ENHANCED.search(message)


def _member(digest: str, scope: str) -> str:
    return f"{digest}|{scope}"


def _scope(list_name: str | None) -> str:
    return (list_name or "").strip().lower() or ALL_LISTS


def add(
    client: redis.Redis, address: str, *, list_name: str | None = None, reason: Reason = "manual",
    ttl: float | None = None,
) -> Entry:  # fmt: skip
    """Suppress ADDRESS (for every email, or only LIST_NAME's), for TTL seconds or for good."""
    digest, masked = address_digest(address), mask_address(address)
    return add_hashed(client, digest, masked, list_name=list_name, reason=reason, ttl=ttl)


def add_hashed(
    client: redis.Redis, digest: str, masked: str, *, list_name: str | None = None, reason: Reason = "manual",
    ttl: float | None = None,
) -> Entry:  # fmt: skip
    """``add`` for an address known only by its DIGEST (and MASKED form): an unsubscribe link's."""
    scope, now = _scope(list_name), time.time()
    until = now + ttl if ttl else 0.0
    entry = Entry(digest, scope, masked, reason, now, until)
    value = json.dumps({"address": entry.address, "reason": reason, "added_at": now, "until": until})
    member = _member(digest, scope)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(suppressed_key(digest), scope, value)
        pipe.zadd(SUPPRESSED, {member: now})
        if until:
            pipe.zadd(SUPPRESSED_EXPIRY, {member: until})
        else:
            pipe.zrem(SUPPRESSED_EXPIRY, member)
        pipe.hincrby(METRICS, f"suppression_added|{reason}", 1)
        pipe.execute()
    return entry


def remove(client: redis.Redis, address: str, list_name: str | None = None) -> int:
    """Lift ADDRESS's suppression (only LIST_NAME's if given, else every entry); how many were lifted."""
    digest = address_digest(address)
    key = suppressed_key(digest)
    scopes = [_scope(list_name)] if list_name else [str(s) for s in client.hkeys(key)]
    if not scopes:
        return 0
    members = [_member(digest, scope) for scope in scopes]
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(key, *scopes)
        pipe.zrem(SUPPRESSED, *members)
        pipe.zrem(SUPPRESSED_EXPIRY, *members)
        removed = pipe.execute()
    return int(removed[0])


def _parse(digest: str, scope: str, raw: Any) -> Entry:
    data = json.loads(raw)
    return Entry(digest, scope, str(data["address"]), str(data["reason"]), float(data["added_at"]),
                 float(data["until"] or 0))  # fmt: skip


def check(client: redis.Redis, address: str) -> list[Entry]:
    """ADDRESS's suppressions in force (every scope)."""
    digest, now = address_digest(address), time.time()
    found = cast(dict[Any, Any], client.hgetall(suppressed_key(digest)))
    entries = [_parse(digest, str(scope), raw) for scope, raw in found.items()]
    return sorted((e for e in entries if e.active(now)), key=lambda e: e.scope)


def find(client: redis.Redis, addresses: Sequence[str], list_name: str = "") -> set[str]:
    """Which of ADDRESSES are suppressed for an email of list LIST_NAME ("" none): one round trip."""
    if not addresses:
        return set()
    scopes = [ALL_LISTS, list_name] if list_name else [ALL_LISTS]
    with client.pipeline(transaction=False) as pipe:
        for address in addresses:
            pipe.hmget(suppressed_key(address_digest(address)), scopes)
        replies = pipe.execute()
    now = time.time()
    found: set[str] = set()
    for address, values in zip(addresses, replies, strict=True):
        for raw in values:
            if raw is not None and (not (until := float(json.loads(raw)["until"] or 0)) or until > now):
                found.add(address)
    return found


def entries(client: redis.Redis, limit: int = 100, before: float | None = None) -> list[Entry]:
    """Suppressions in force, newest first (masked addresses), added before BEFORE if given."""
    sweep(client)
    top = f"({before}" if before is not None else "+inf"
    members = [str(m) for m in client.zrevrangebyscore(SUPPRESSED, top, "-inf", start=0, num=limit)]
    pairs = [member.split("|", 1) for member in members]
    with client.pipeline(transaction=False) as pipe:
        for digest, scope in pairs:
            pipe.hget(suppressed_key(digest), scope)
        replies = pipe.execute()
    return [_parse(digest, scope, raw) for (digest, scope), raw in zip(pairs, replies, strict=True) if raw]


def sweep(client: redis.Redis, now: float | None = None) -> int:
    """Drop the entries whose expiry has passed; return how many are left."""
    now = time.time() if now is None else now
    due = [str(m) for m in client.zrangebyscore(SUPPRESSED_EXPIRY, "-inf", now, start=0, num=1000)]
    with client.pipeline(transaction=True) as pipe:
        for member in due:
            digest, scope = member.split("|", 1)
            pipe.hdel(suppressed_key(digest), scope)
        if due:
            pipe.zrem(SUPPRESSED, *due)
            pipe.zrem(SUPPRESSED_EXPIRY, *due)
        pipe.zcard(SUPPRESSED)
        replies = pipe.execute()
    return int(replies[-1])


def suppress_bounces(client: redis.Redis, rejected: Sequence[dict[str, Any]], settings: Settings) -> None:
    """Suppress the REJECTED recipients (``address``, ``code``, ``message``) refused as unknown."""
    if not settings.email_suppress_bounces:
        return
    ttl = settings.email_suppression_bounce_days * 86400 or None
    for refusal in rejected:
        if hard_bounce(int(refusal["code"]), str(refusal["message"])):
            add(client, str(refusal["address"]), reason="bounce", ttl=ttl)
