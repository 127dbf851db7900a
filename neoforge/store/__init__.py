"""The status store: every email's record, payload, timeline and delivery ledger in Redis.

``keys`` names every key, ``lua/`` holds the atomic steps, ``records`` reads and
writes records, ``ledger`` says who may send an email right now, ``batches``
tracks bulk sends, ``encoding`` says how values are written.
"""

from neoforge.store.encoding import Attempt, event, iso, now_iso
from neoforge.store.records import DURATION_BUCKETS, LATENCY_BUCKETS, TERMINAL, StatusStore

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "TERMINAL",
    "Attempt",
    "StatusStore",
    "event",
    "iso",
    "now_iso",
]
