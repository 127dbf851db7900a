"""The lease: who may send an email right now, and taking it over from a sender that died.

A lease is a Redis key with an expiry holding ``host|pid|token``. Its holder's
process heartbeats in Redis (neoforge/heartbeat.py, key ``alive:host|pid``);
once that heartbeat has lapsed, by Redis's clock, any host takes the lease
over at once (lua/begin.lua), and on the holder's own host a dead PID says so
sooner. Every take moves the email's fence on, and every later write of the
attempt checks it (neoforge/store/fencing.py), so a holder that comes back
(stopped, or cut off from Redis) can neither send nor record. The record's
``data_attempt`` mark (written right before DATA) is the other half of the
ledger: an attempt interrupted after it is never sent again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

from neoforge.logs import log_event
from neoforge.store.records import StatusStore

__all__ = ["HOST", "Taken", "holder_is_dead", "process_name", "take"]

logger = logging.getLogger(__name__)


def _host() -> str:
    # Host name and PID namespace together: two containers may share a host
    # name, and a PID means something only within its namespace.
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}~{namespace}"


HOST = _host()


def process_name() -> str:
    """This process's name in leases and heartbeats: ``host|pid``."""
    return f"{HOST}|{os.getpid()}"


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
    fence: str = ""  # the attempt's fencing token: every later write of it checks it
    taken_from: str = ""  # a silent holder whose lease was taken over, or ""


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


def take(
    store: StatusStore, email_id: str, worker: str, lease_seconds: float, heartbeat_seconds: float
) -> Taken:
    """Take EMAIL_ID's lease and mark it sending, breaking a dead or silent holder's lease at once."""
    lease = f"{process_name()}|{uuid.uuid4().hex}"
    found = store.begin_attempt(email_id, worker, lease, lease_seconds, heartbeat_seconds)
    if found[0] == "leased" and found[1] is not None and holder_is_dead(found[1]):
        # Its sender was killed (a pool child, a worker process): take over at once.
        found = store.begin_attempt(email_id, worker, lease, lease_seconds, heartbeat_seconds, found[1])
    taken = Taken(*found)
    if taken.taken_from:
        # Its holder stopped heartbeating (killed, stopped, cut off): its late writes are fenced.
        log_event(logger, "email.lease_taken_over", logging.WARNING, id=email_id,
                  holder=taken.taken_from.rpartition("|")[0], worker=worker)  # fmt: skip
    return taken
