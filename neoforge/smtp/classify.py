"""What an SMTP failure means: retry (transient), dead letter (permanent) or pause (setup), and its class."""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from neoforge.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    SetupError,
    TransientDeliveryError,
)
from neoforge.redact import mask_addresses

__all__ = ["classify", "reply_error", "too_much_mail"]

# How providers word "you are sending too fast" (Postfix's and Exim's rate
# limits, Gmail's 4.7.28, Microsoft's, SES's and the usual relays'). Greylisting
# ("try again later", 4.7.1 "greylisted") is not a rate limit: it is retried alone.
_TOO_MUCH = re.compile(
    r"too (much|many) (mail|messages|emails|connections|requests)|rate.?limit|throttl|"
    r"sending rate|message rate|(sending|message|daily) quota|slow down|too fast|4\.7\.28|"
    r"4\.3\.2 .*(busy|resources)",
    re.IGNORECASE,
)


def too_much_mail(code: int, message: str) -> bool:
    """True for a 421/450/451/452 reply that says the sender goes too fast (not a greylisting)."""
    return code in (421, 450, 451, 452) and _TOO_MUCH.search(message) is not None


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind EXC, if any (aiosmtplib wraps a failed handshake in SMTPConnectError)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _login_refused(code: int, message: str) -> SetupError:
    return SetupError(f"login refused: {code} {mask_addresses(message)}", code, ErrorClass.AUTH)


def reply_error(code: int, message: str) -> DeliveryError:
    """The error for a reply CODE to MAIL or DATA (or a refusal of every recipient)."""
    text = f"{code} {mask_addresses(message)}"
    if code == 552 or "5.3.4" in message:
        return PermanentDeliveryError(f"message too large for the server: {text}", code, ErrorClass.SIZE)
    if too_much_mail(code, message):
        return TransientDeliveryError(f"too much mail: {text}", code, ErrorClass.THROTTLED)
    if 400 <= code < 500:
        return TransientDeliveryError(text, code, ErrorClass.SMTP_4XX)
    if 500 <= code < 600:
        return PermanentDeliveryError(text, code, ErrorClass.SMTP_5XX)
    return TransientDeliveryError(f"unexpected reply {text}", code, ErrorClass.SMTP_4XX)


def classify(exc: BaseException, phase: str) -> DeliveryError:
    """Map an aiosmtplib or socket failure in PHASE (connect, envelope, data) to a DeliveryError.

    ``connect`` covers the greeting, EHLO, STARTTLS and AUTH: a refused
    login or a TLS failure there is a setup problem, not a network blip.
    """
    if isinstance(exc, DeliveryError):
        return exc
    tls = _tls_cause(exc)
    if tls is not None:
        return SetupError(f"TLS failed: {type(tls).__name__}: {tls}", None, ErrorClass.TLS)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _login_refused(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [item.code for item in exc.recipients]
        text = "; ".join(f"{item.code} {mask_addresses(item.message)}" for item in exc.recipients)
        if any(400 <= c < 500 for c in codes):
            return TransientDeliveryError(
                f"every recipient deferred: {text}", min(codes), ErrorClass.SMTP_4XX
            )
        return PermanentDeliveryError(
            f"every recipient refused: {text}", min(codes), ErrorClass.RECIPIENT_REJECTED
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if phase == "connect" and exc.code in (530, 534, 535, 538):
            return _login_refused(exc.code, exc.message)
        return reply_error(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError) and phase == "data":
        return PermanentDeliveryError(
            f"outcome unknown, connection lost during DATA: {exc}", None, ErrorClass.OUTCOME_UNKNOWN
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SetupError(f"server does not support what we need: {exc}", None, ErrorClass.TLS)
    if type(exc) is aiosmtplib.SMTPException and phase == "connect":
        # aiosmtplib's words for an extension the server does not offer.
        text = str(exc)
        if "STARTTLS" in text:
            return SetupError(f"STARTTLS not offered by the server: {text}", None, ErrorClass.TLS)
        if "AUTH" in text:
            return SetupError(f"AUTH not offered by the server: {text}", None, ErrorClass.AUTH)
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return TransientDeliveryError(f"timed out: {exc}", None, ErrorClass.TIMEOUT)
    if isinstance(exc, ConnectionError | OSError | aiosmtplib.SMTPException):
        return TransientDeliveryError(
            f"{type(exc).__name__}: {mask_addresses(str(exc))}", None, ErrorClass.CONNECTION
        )
    if isinstance(exc, ValueError):
        return PermanentDeliveryError(
            f"message cannot be sent: {mask_addresses(str(exc))}", None, ErrorClass.INVALID
        )
    raise exc
