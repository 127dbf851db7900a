"""The lease: who may send an email right now, and taking it over from a sender that died.

A lease is a Redis key with an expiry holding ``host|pid|token``. The record's
``data_attempt`` mark (written right before DATA) is the other half of the
ledger: an attempt interrupted after it is never sent again.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from neoforge.store.encoding import now_iso
from neoforge.store.keys import email_key, lease_key
from neoforge.store.records import StatusStore

__all__ = ["HOST", "Taken", "give_back", "holder_is_dead", "take"]


def _host() -> str:
    # Host name and PID namespace together: two containers may share a host
    # name, and a PID means something only within its namespace.
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}~{namespace}"


HOST = _host()


@dataclass(frozen=True)
class Taken:
    """What taking an email's lease found (see ``StatusStore.begin_attempt``)."""

    status: str
    payload: str | None
    number: int
    created: float
    priority: str
    todo: str = ""
    outcomes: str = ""


def holder_is_dead(holder: str) -> bool:
    """True when the lease HOLDER is a process of this host and PID namespace that is gone."""
    host, _, rest = holder.partition("|")
    pid = rest.partition("|")[0]
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie (a killed pool child not yet reaped) is dead too.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def take(store: StatusStore, email_id: str, worker: str, lease_seconds: float) -> Taken:
    """Take EMAIL_ID's lease and mark it sending, breaking a dead holder's lease at once."""
    lease = f"{HOST}|{os.getpid()}|{uuid.uuid4().hex}"
    found = store.begin_attempt(email_id, worker, lease, lease_seconds)
    if found[0] == "leased" and found[1] is not None and holder_is_dead(found[1]):
        # Its sender was killed (a pool child, a worker process): take over at once.
        found = store.begin_attempt(email_id, worker, lease, lease_seconds, found[1])
    return Taken(*found)


def give_back(store: StatusStore, email_id: str, number: int) -> None:
    """Undo ``take`` before anything was sent (a rate limit said wait): the attempt does not count."""
    with store.client.pipeline(transaction=True) as pipe:
        pipe.hincrby(email_key(email_id), "attempts", -1)
        pipe.hset(email_key(email_id), mapping={"status": "retrying" if number > 1 else "queued",
                                                "updated_at": now_iso()})  # fmt: skip
        pipe.delete(lease_key(email_id))
        pipe.execute()
