"""NeoForge Mail: background email delivery for FastAPI, on Celery and Redis.

This package is the delivery core and the app layer; the Celery glue is the
``tasks`` package. Queue from app code with ``tasks.send_email.delay(...)``
or ``neoforge.service.EmailService``; both publish through Celery.
"""

from neoforge.errors import (
    ConfigurationError,
    DeliveryError,
    EmailNotFound,
    InvalidEmail,
    NeoforgeError,
    PermanentDeliveryError,
    QueueFull,
    QueueUnavailable,
    TransientDeliveryError,
)
from neoforge.message import Attachment, EmailRequest
from neoforge.settings import Settings, get_settings

__all__ = [
    "Attachment",
    "ConfigurationError",
    "DeliveryError",
    "EmailNotFound",
    "EmailRequest",
    "InvalidEmail",
    "NeoforgeError",
    "PermanentDeliveryError",
    "QueueFull",
    "QueueUnavailable",
    "Settings",
    "TransientDeliveryError",
    "get_settings",
]
