"""What the console lists: emails by filter or by recipient, dead letters by class, batches, a preview.

Only records are read (ids, statuses, counts, masked outcomes): never an
address, but for the one an operator searched for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jinja2
import redis

from neoforge.redact import mask_addresses
from neoforge.store import StatusStore
from neoforge.store.keys import FAILED, PREFIX, batch_emails_key, email_key
from neoforge.templates import render

__all__ = ["Filters", "Preview", "batches", "by_recipient", "dead_letter_classes", "emails", "preview"]

_FIELDS = ("status", "priority", "error_class", "attempts", "recipients", "created_at",
           "updated_at", "template", "batch", "last_error")  # fmt: skip
_SCAN_BUDGET = 5000  # keys looked at per page when walking the keyspace
# A sandboxed frame may still reload itself elsewhere: no refresh in a preview.
_REFRESH = re.compile(r"<meta[^>]*http-equiv\s*=\s*['\"]?refresh[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class Filters:
    """The email list's filters; times are ISO 8601 prefixes compared with ``created_at``."""

    status: str = ""
    priority: str = ""
    error_class: str = ""
    batch: str = ""
    since: str = ""
    until: str = ""

    def match(self, row: dict[str, str]) -> bool:
        created = row.get("created_at", "")
        return (
            (not self.status or row.get("status") == self.status)
            and (not self.priority or (row.get("priority") or "transactional") == self.priority)
            and (not self.error_class or row.get("error_class") == self.error_class)
            and (not self.batch or row.get("batch") == self.batch)
            and (not self.since or created >= self.since)
            and (not self.until or created[: len(self.until)] <= self.until)
        )


def _rows(client: redis.Redis, ids: list[str]) -> list[dict[str, str]]:
    with client.pipeline(transaction=False) as pipe:
        for email_id in ids:
            pipe.hmget(email_key(email_id), list(_FIELDS))
        replies = pipe.execute()
    # A sent record does not repeat its id (the compact sent form): the key names it.
    return [
        {"id": email_id, **dict(zip(_FIELDS, (v or "" for v in values), strict=True))}
        for email_id, values in zip(ids, replies, strict=True)
        if values[0]
    ]


def _ids_at(client: redis.Redis, filters: Filters, offset: int, count: int) -> list[str]:
    """Ids from the exact index a filter names: a batch's emails, or the dead letters newest first."""
    if filters.batch:
        return [str(i) for i in client.lrange(batch_emails_key(filters.batch), offset, offset + count - 1)]
    return [str(i) for i in client.zrevrange(FAILED, offset, offset + count - 1)]


def emails(
    client: redis.Redis, filters: Filters, cursor: str = "", limit: int = 50
) -> tuple[list[dict[str, str]], str]:
    """One page of emails matching FILTERS and the cursor of the next page ("" at the end).

    A batch or the dead letters are read from their index in order; anything
    else walks the records with SCAN (at most _SCAN_BUDGET keys per page),
    newest first within a page; such a page holds every match of the keys
    it looked at, so it may hold somewhat more than LIMIT, and never skips one.
    """
    found: list[dict[str, str]] = []
    looked = 0
    if filters.batch or filters.status == "failed":
        offset = int(cursor or 0)
        while len(found) < limit and looked < _SCAN_BUDGET:
            ids = _ids_at(client, filters, offset, 200)
            if not ids:
                return found, ""
            rows = {row["id"]: row for row in _rows(client, ids)}
            for email_id in ids:
                offset += 1
                row = rows.get(email_id)  # None: its record expired
                if row is not None and filters.match(row):
                    found.append(row)
                    if len(found) == limit:
                        break
            looked += len(ids)
        return found, str(offset)
    position = int(cursor or 0)
    while len(found) < limit and looked < _SCAN_BUDGET:
        position, keys = client.scan(position, match=f"{PREFIX}email:*", count=limit, _type="hash")
        looked += limit
        ids = [str(key)[len(PREFIX) + 6 :] for key in keys]
        found += [row for row in _rows(client, ids) if filters.match(row)]
        if position == 0:
            break
    found.sort(key=lambda row: row["created_at"], reverse=True)
    return found, "" if position == 0 else str(position)


def by_recipient(store: StatusStore, address: str, filters: Filters) -> list[dict[str, str]]:
    """The emails to ADDRESS (exact, through the hashed recipient index), newest first."""
    rows = [row for row in _rows(store.client, store.emails_to(address)) if filters.match(row)]
    return sorted(rows, key=lambda row: row["created_at"], reverse=True)


def dead_letter_classes(client: redis.Redis, cap: int = 20_000) -> dict[str, int]:
    """How many dead letters each error class holds (the newest CAP looked at)."""
    counts: dict[str, int] = {}
    ids = [str(i) for i in client.zrevrange(FAILED, 0, cap - 1)]
    for start in range(0, len(ids), 1000):
        with client.pipeline(transaction=False) as pipe:
            for email_id in ids[start : start + 1000]:
                pipe.hget(email_key(email_id), "error_class")
            for name in pipe.execute():
                counts[str(name or "unknown")] = counts.get(str(name or "unknown"), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def batches(client: redis.Redis, limit: int = 50) -> list[dict[str, str]]:
    """Up to LIMIT bulk sends still on record, newest first."""
    keys = []
    for key in client.scan_iter(match=f"{PREFIX}batch:*", count=500, _type="hash"):
        keys.append(str(key))
        if len(keys) >= 1000:
            break
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        found = [dict(record) for record in pipe.execute() if record]
    return sorted(found, key=lambda record: record.get("created_at", ""), reverse=True)[:limit]


@dataclass(frozen=True)
class Preview:
    """An email's subject and bodies as stored, addresses masked; ``problem`` if it cannot be shown."""

    subject: str = ""
    text: str | None = None
    html: str | None = None
    problem: str = ""


def preview(store: StatusStore, email_id: str) -> Preview | None:
    """The stored content rendered as it will be sent; None once it is deleted (sent or purged)."""
    stored = store.content(email_id)
    if stored is None:
        return None
    try:
        fields: dict[str, Any] = json.loads(stored)
        if fields.get("template"):
            body = render(str(fields["template"]), dict(fields.get("context") or {}))
            text, html = body.text, body.html
        else:
            text, html = fields.get("text"), fields.get("html")
    except (ValueError, TypeError, jinja2.TemplateError) as exc:
        return Preview(problem=f"cannot be rendered: {type(exc).__name__}")
    html = _REFRESH.sub("", html) if html is not None else None
    masked = [mask_addresses(part) if part is not None else None for part in (text, html)]
    return Preview(mask_addresses(str(fields.get("subject") or "")), masked[0], masked[1])
