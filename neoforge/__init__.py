"""NeoForge Mail: background email delivery for FastAPI, on Celery and Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoforge.errors import (
    ConfigurationError,
    DeliveryError,
    EmailNotFound,
    InvalidEmail,
    NeoforgeError,
    PermanentDeliveryError,
    QueueUnavailable,
    TransientDeliveryError,
)
from neoforge.message import Attachment, EmailRequest
from neoforge.settings import Settings, get_settings

if TYPE_CHECKING:
    from neoforge.service import EmailService

__all__ = [
    "Attachment",
    "ConfigurationError",
    "DeliveryError",
    "EmailNotFound",
    "EmailRequest",
    "EmailService",
    "InvalidEmail",
    "NeoforgeError",
    "PermanentDeliveryError",
    "QueueUnavailable",
    "Settings",
    "TransientDeliveryError",
    "get_settings",
]


def __getattr__(name: str) -> Any:
    # EmailService imports the Celery task, which imports this package:
    # loading it lazily lets `tasks` and `neoforge` import each other safely.
    if name == "EmailService":
        from neoforge.service import EmailService

        return EmailService
    raise AttributeError(name)
