"""What the script that records a new email may do in the same round trip: charge an API key
and publish the email's broker message."""

from __future__ import annotations

from typing import NamedTuple

from neoforge.errors import RateLimited

__all__ = ["Charge", "Publish"]


class Charge(NamedTuple):
    """Counts to add to an API key's minute before recording; over a limit, nothing is recorded."""

    requests_key: str
    recipients_key: str
    requests: int
    recipients: int
    max_requests: int
    max_recipients: int
    retry_after: int

    def check(self, used_requests: int, used_recipients: int) -> None:
        """Raise RateLimited if the counters, after adding, are past a limit."""
        if used_requests > self.max_requests:
            raise RateLimited("requests", self.retry_after)
        if used_recipients > self.max_recipients:
            raise RateLimited("recipients", self.retry_after)


class Publish(NamedTuple):
    """A broker message to push with the record (kombu's Redis layout: LPUSH onto the queue's list)."""

    list_key: str
    entry: str
