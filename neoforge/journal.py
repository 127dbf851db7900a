"""Deliveries the SMTP server accepted but Redis would not record: kept on the worker's disk.

When Redis refuses or cannot take the write that records a sent email (full,
its disk failing, unreachable), the acceptance is appended to a file in
EMAIL_JOURNAL_DIR (one JSON line per email, fsynced) and written into Redis as
soon as it takes writes again: every scheduler tick, and at worker start. So a
delivered email is never dead-lettered as failed (nor requeued and sent twice)
for want of its record. Every process of a host shares the folder, under a
file lock; recording the same acceptance twice changes nothing (lua/sent.lua).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from neoforge.errors import LeaseLost
from neoforge.logs import log_event
from neoforge.store import StatusStore

__all__ = ["Journal"]

logger = logging.getLogger(__name__)


class Journal:
    """The host's journal of unrecorded deliveries to the Redis at URL, in FOLDER (a file per Redis)."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder = folder
        self.name = f"sent-{hashlib.sha256(url.encode()).hexdigest()[:16]}.jsonl"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.folder / self.name
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, **entry: Any) -> None:
        """Keep one acceptance (mark_sent's arguments); on disk, fsynced, when this returns."""
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._locked() as path, open(path, "a") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def pending(self) -> bool:
        """True if some acceptance waits to be recorded (no lock, no read: a stat)."""
        try:
            return (self.folder / self.name).stat().st_size > 0
        except OSError:
            return False

    def holds(self, email_id: str) -> bool:
        """True if EMAIL_ID's acceptance waits here to be recorded."""
        if not self.pending():
            return False
        with self._locked() as path:
            return any(entry.get("email_id") == email_id for entry in _read(path))

    def replay(self, store: StatusStore) -> int:
        """Record every waiting acceptance Redis now takes; return how many. Keeps the rest."""
        if not self.pending():
            return 0
        with self._locked() as path:
            entries = _read(path)
            left: list[dict[str, Any]] = []
            done = 0
            for entry in entries:
                if left:
                    left.append(entry)
                    continue
                try:
                    store.mark_sent(entry["email_id"], entry["attempt"], entry["priority"], entry["latency"],
                                    entry.get("extra"), str(entry.get("fence") or ""))  # fmt: skip
                    done += 1
                except LeaseLost:
                    # Another sender took the email over meanwhile (our DATA mark decided it): not ours.
                    log_event(logger, "email.fenced", logging.WARNING, id=entry["email_id"], write="sent")
                except redis.RedisError:
                    left.append(entry)
            temporary = path.with_suffix(".tmp")
            with open(temporary, "w") as out:
                out.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in left)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(path)
        return done


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    # A line cut short by a crash mid-write is not an acceptance we promised anyone.
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries
