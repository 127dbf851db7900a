"""Exceptions raised by NeoForge Mail.

The whole tree::

    NeoforgeError
    ├── ConfigurationError       a setting has a bad value
    ├── InvalidEmail             an email was refused before anything was queued
    ├── EmailNotFound            no email was ever queued under that id
    ├── RateLimited              an API key used its minute's allowance
    ├── QueueUnavailable         Redis (broker or status store) cannot be reached
    │   └── QueueFull            Redis answers but refuses writes: maxmemory reached, or persistence failing
    ├── LeaseLost                another sender took the email over: this attempt may not send or record
    └── DeliveryError            the SMTP server did not take the message
        ├── TransientDeliveryError   worth retrying: 4xx, connection, timeout
        ├── PermanentDeliveryError   not worth retrying: 5xx, refused recipients, bad message
        └── SetupError               the server cannot be used as configured: sending pauses

Transient versus permanent versus setup decides retry, dead letter or pause,
so delivery code raises one of the leaves, never the bare ``DeliveryError``.
Every failure also carries one ``ErrorClass``, the label operators group and
requeue by.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "EmailNotFound",
    "ErrorClass",
    "FieldError",
    "InvalidEmail",
    "LeaseLost",
    "NeoforgeError",
    "PermanentDeliveryError",
    "QueueFull",
    "QueueUnavailable",
    "RateLimited",
    "SetupError",
    "TransientDeliveryError",
    "plain_message",
]


class ErrorClass(StrEnum):
    """Why an attempt failed: the ``error_class`` of statuses, dead letters, metrics and requeue filters."""

    SMTP_4XX = "smtp_4xx"  # any 4xx reply, RCPT-time included (greylisting, mailbox busy): retried
    RECIPIENT_REJECTED = "recipient_rejected"  # 5xx for a recipient at RCPT: that recipient fails
    SMTP_5XX = "smtp_5xx"  # 5xx at MAIL or DATA: the email fails
    AUTH = "auth"  # login refused, or AUTH not offered: sending pauses
    TLS = "tls"  # certificate, hostname, handshake, or STARTTLS not offered: sending pauses
    CONNECTION = "connection"  # refused, reset or dropped before DATA: retried
    TIMEOUT = "timeout"  # a command or the attempt timed out before DATA: retried
    SIZE = "size"  # larger than EMAIL_MAX_MESSAGE_BYTES or the server's SIZE, or 552: fails
    INVALID = "invalid"  # not a valid email (fields a client published, a message we cannot build)
    OUTCOME_UNKNOWN = "outcome_unknown"  # lost after DATA began: EMAIL_UNKNOWN_OUTCOME decides
    INTERNAL = "internal"  # a defect of ours: fails, requeue once fixed
    TIME_LIMIT = "time_limit"  # prefork's hard time limit killed the attempt: fails
    NOT_ALLOWED = "not_allowed"  # no recipient left by EMAIL_ALLOWED_DOMAINS: fails
    EXPIRED = "expired"  # expires_at passed before it could be sent
    CANCELLED = "cancelled"  # its content was deleted before it was sent
    THROTTLED = "throttled"  # 421/450/451/452 "too much mail": the whole sender slows down, no retry spent
    SUPPRESSED = "suppressed"  # every recipient is on the suppression list: not sent


class NeoforgeError(Exception):
    """Root of every error NeoForge Mail raises on purpose."""


class ConfigurationError(NeoforgeError):
    """Raised when a setting is missing or has a bad value; the message names the variable."""


# Pydantic puts these before the text of a ValueError / AssertionError raised by a validator.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def plain_message(msg: str) -> str:
    """A pydantic error message as a person reads it: without "Value error, " in front."""
    for prefix in _PYDANTIC_PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


@dataclass(frozen=True)
class FieldError:
    """One reason an email was refused: where (``loc``) and why (``msg``)."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"


class InvalidEmail(NeoforgeError, ValueError):
    """Raised when an email is refused before queueing (bad address, header, template, size)."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors))


class EmailNotFound(NeoforgeError, LookupError):
    """Raised when an id names no email that was ever queued."""


class RateLimited(NeoforgeError):
    """Raised when an API key has used its minute's allowance; ``retry_after`` is in seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limit for {what} reached; retry in {retry_after} s")


class QueueUnavailable(NeoforgeError):
    """Raised when Redis cannot be reached to queue or read an email; nothing was queued."""


class QueueFull(QueueUnavailable):
    """Raised when Redis answers but refuses writes (maxmemory, or its disk failing); nothing was queued."""


class LeaseLost(NeoforgeError):
    """Raised when an attempt's write is refused: its fence is stale, another sender took the email over."""

    def __init__(self, email_id: str, write: str) -> None:
        self.email_id = email_id
        self.write = write
        super().__init__(f"email {email_id}: lease taken over by another sender; {write} not written")


class DeliveryError(NeoforgeError):
    """Raised when the SMTP server did not take a message; ``code`` is its reply code, if any.

    ``error_class`` is one of ``ErrorClass``, the label for grouping failures.
    """

    def __init__(self, message: str, code: int | None = None, error_class: str = "smtp") -> None:
        self.code = code
        self.error_class = error_class
        super().__init__(message, code, error_class)

    def __str__(self) -> str:
        return str(self.args[0])


class TransientDeliveryError(DeliveryError):
    """Raised for failures worth retrying: SMTP 4xx, refused or dropped connections, timeouts."""


class PermanentDeliveryError(DeliveryError):
    """Raised for failures not worth retrying: SMTP 5xx, every recipient refused, bad message."""


class SetupError(DeliveryError):
    """Raised when the SMTP server cannot be used as configured (login, TLS): sending pauses, emails wait."""
