"""Exceptions raised by NeoForge Mail.

The whole tree::

    NeoforgeError
    ├── ConfigurationError       a setting has a bad value
    ├── InvalidEmail             an email was refused before anything was queued
    ├── EmailNotFound            no email was ever queued under that id
    ├── QueueUnavailable         Redis (broker or status store) cannot be reached
    └── DeliveryError            the SMTP server did not take the message
        ├── TransientDeliveryError   worth retrying: 4xx, connection, timeout
        └── PermanentDeliveryError   not worth retrying: 5xx, refused recipients, bad message

Transient versus permanent decides retry versus dead letter, so delivery code
raises one of the two leaves, never the bare ``DeliveryError``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "EmailNotFound",
    "FieldError",
    "InvalidEmail",
    "NeoforgeError",
    "PermanentDeliveryError",
    "QueueUnavailable",
    "TransientDeliveryError",
]


class NeoforgeError(Exception):
    """Root of every error NeoForge Mail raises on purpose."""


class ConfigurationError(NeoforgeError):
    """Raised when a setting is missing or has a bad value; the message names the variable."""


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


class QueueUnavailable(NeoforgeError):
    """Raised when Redis cannot be reached to queue or read an email; nothing was queued."""


class DeliveryError(NeoforgeError):
    """Raised when the SMTP server did not take a message; ``code`` is its reply code, if any.

    ``error_class`` is a short label for grouping failures: ``smtp_4xx``,
    ``smtp_5xx``, ``recipients_refused``, ``connection``, ``timeout``,
    ``outcome_unknown``, ``bad_message``.
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
