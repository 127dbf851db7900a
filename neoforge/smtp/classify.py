"""What an SMTP failure means: transient (retry) or permanent (dead letter), and its error class."""

from __future__ import annotations

import aiosmtplib

from neoforge.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from neoforge.redact import mask_addresses

__all__ = ["classify"]


def classify(exc: BaseException, phase: str) -> DeliveryError:
    """Map an aiosmtplib or socket failure in PHASE (connect, envelope, data) to a DeliveryError."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [item.code for item in exc.recipients]
        text = "; ".join(f"{item.code} {item.message}" for item in exc.recipients)
        error: type[DeliveryError] = (
            TransientDeliveryError if any(400 <= c < 500 for c in codes) else PermanentDeliveryError
        )
        return error(f"every recipient refused: {mask_addresses(text)}", min(codes), "recipients_refused")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"{exc.code} {mask_addresses(exc.message)}"
        if 400 <= exc.code < 500:
            return TransientDeliveryError(text, exc.code, "smtp_4xx")
        if 500 <= exc.code < 600:
            return PermanentDeliveryError(text, exc.code, "smtp_5xx")
        return TransientDeliveryError(f"unexpected reply {text}", exc.code, "smtp_other")
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError)) and phase == "data":
        # The message may have been taken before the connection went: sending
        # again could deliver it twice, so a person decides (requeue).
        return PermanentDeliveryError(
            f"outcome unknown, connection lost during DATA: {exc}", None, "outcome_unknown"
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentDeliveryError(f"server does not support what we need: {exc}", None, "bad_config")
    if isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return TransientDeliveryError(f"timed out: {exc}", None, "timeout")
    if isinstance(exc, (ConnectionError, OSError, aiosmtplib.SMTPException)):
        return TransientDeliveryError(f"{type(exc).__name__}: {mask_addresses(str(exc))}", None, "connection")
    if isinstance(exc, ValueError):
        return PermanentDeliveryError(
            f"message cannot be sent: {mask_addresses(str(exc))}", None, "bad_message"
        )
    raise exc
