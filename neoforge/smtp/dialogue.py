"""One SMTP dialogue: MAIL, RCPT, DATA, so every failure keeps its reply code and phase.

When the server offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go in
one write and their replies come back in one round trip (neoforge/smtp/pipelining.py);
otherwise step by step. Either way the caller's ledger mark is written after
the server has said it takes the message (354) and before a byte of it is sent.

fastapi-mail's own ``send_message`` is not used: it opens a connection per
email and turns connection-phase failures into a generic ``ConnectionErrors``
(fastapi_mail/connection.py), which would erase the code that decides retry
versus dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from neoforge.errors import DeliveryError, ErrorClass, PermanentDeliveryError, TransientDeliveryError
from neoforge.smtp.classify import classify
from neoforge.smtp.pipelining import Pipeline, command, message_data, offered
from neoforge.smtp.pool import Pool

__all__ = ["Accepted", "deliver"]

BeforeData = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Accepted:
    """How the server answered: its reply to DATA (None if no recipient was accepted, so no DATA),
    and the recipients it refused at RCPT, permanently (5xx) or for now (4xx), as
    ``{"address", "code", "message"}`` with the raw address (the caller masks what it stores)."""

    reply: str | None
    rejected: list[dict[str, Any]] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Dialogue:
    """How far one delivery got, for the verdict when its deadline cuts it short."""

    smtp: aiosmtplib.SMTP | None = None
    in_data: bool = False
    before_data: BeforeData | None = None


class _DataPhaseLost(Exception):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


async def deliver(
    pool: Pool,
    sender: str,
    data: bytes,
    recipients: list[str],
    timeout: float | None = None,
    bulk: bool = False,
    before_data: BeforeData | None = None,
) -> Accepted:
    """Send DATA to RECIPIENTS over a pooled connection; raise a Transient- or PermanentDeliveryError.

    BULK mail waits for one of its share of the connections. BEFORE_DATA is
    awaited right before the DATA command; if it raises, the dialogue ends
    there and nothing is sent. TIMEOUT bounds the whole dialogue (connect
    included): Celery's threads pool has no hard time limit, and the email's
    lease relies on the attempt ending in time. A dialogue cut short during
    DATA may have delivered the message: it is reported as ``outcome_unknown``.
    """
    state = _Dialogue(before_data=before_data)
    try:
        async with (
            asyncio.timeout(timeout),
            pool.bulk_slots if bulk else contextlib.nullcontext(),
            pool.slots,
        ):
            return await _deliver(pool, sender, recipients, data, state)
    except TimeoutError as exc:
        if state.smtp is not None:
            state.smtp.close()  # in an unknown state: never back to the pool
        if state.in_data:
            raise PermanentDeliveryError(
                "outcome unknown, time limit reached during DATA", None, "outcome_unknown"
            ) from exc
        raise TransientDeliveryError(f"timed out after {timeout:.0f} s", None, "timeout") from exc


async def _deliver(pool: Pool, sender: str, recipients: list[str], data: bytes, state: _Dialogue) -> Accepted:
    reused = pool.take()
    if reused is not None:
        smtp, used = reused
        state.smtp = smtp
        try:
            accepted = await _transmit(smtp, sender, recipients, data, state)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            # The server closed an idle connection before MAIL: nothing was
            # sent, so a fresh connection is safe and not a retry.
            smtp.close()
        except _DataPhaseLost as exc:
            raise classify(exc.cause, "data") from exc.cause
        except DeliveryError:
            await _reset(smtp)
            pool.give_back(smtp, used + 1)
            raise
        except Exception as exc:
            await _reset(smtp)
            pool.give_back(smtp, used + 1)
            raise classify(exc, "envelope") from exc
        else:
            pool.give_back(smtp, used + 1)
            return accepted
    state.smtp = None
    try:
        smtp = await pool.connect()
    except DeliveryError:
        raise
    except Exception as exc:
        raise classify(exc, "connect") from exc
    state.smtp = smtp
    try:
        accepted = await _transmit(smtp, sender, recipients, data, state)
    except _DataPhaseLost as exc:
        raise classify(exc.cause, "data") from exc.cause
    except Exception as exc:
        await _reset(smtp)
        pool.give_back(smtp, 1)
        if isinstance(exc, DeliveryError):
            raise
        raise classify(exc, "envelope") from exc
    pool.give_back(smtp, 1)
    return accepted


async def _transmit(
    smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes, state: _Dialogue
) -> Accepted:
    state.in_data = False
    pipelining = await offered(smtp)  # says EHLO first on a new connection: SIZE is known after it
    size = smtp.esmtp_extensions.get("size", "")
    if size.isdigit() and 0 < int(size) < len(data):
        # The server said how much it takes (EHLO SIZE): fail before sending it all.
        raise PermanentDeliveryError(
            f"message of {len(data)} bytes is larger than the server's SIZE {size}", None, ErrorClass.SIZE
        )
    if pipelining:
        return await _pipelined(smtp, sender, recipients, data, state)
    await smtp.mail(sender)
    rejected: list[dict[str, Any]] = []
    deferred: list[dict[str, Any]] = []
    for address in recipients:
        try:
            await smtp.rcpt(address)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refusal = {"address": address, "code": exc.code, "message": exc.message}
            (deferred if 400 <= exc.code < 500 else rejected).append(refusal)
    if len(rejected) + len(deferred) == len(recipients):
        await _reset(smtp)
        return Accepted(None, rejected, deferred)
    if state.before_data is not None:
        # The caller's ledger mark: from here on the message may reach the
        # server, so a crash must not lead to a second copy. If the mark
        # cannot be written, nothing is sent.
        await state.before_data()
    state.in_data = True
    try:
        reply = await smtp.data(data)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
        raise _DataPhaseLost(exc) from exc
    return Accepted(reply.message, rejected, deferred)


async def _pipelined(
    smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes, state: _Dialogue
) -> Accepted:
    """One transaction in two round trips: MAIL, RCPT... and DATA together, then the message."""
    envelope = [command(b"MAIL FROM", sender), *(command(b"RCPT TO", a) for a in recipients), b"DATA\r\n"]
    try:
        with Pipeline(smtp) as pipe:
            pipe.write(b"".join(envelope))
            mail, *rcpts, start = [await pipe.reply() for _ in envelope]
    except BaseException:
        # Replies may still be on their way: the next command would read one of them.
        smtp.close()
        raise
    rejected: list[dict[str, Any]] = []
    deferred: list[dict[str, Any]] = []
    for address, reply in zip(recipients, rcpts, strict=True):
        if reply.code not in (250, 251):  # as aiosmtplib's rcpt() reads them
            refusal = {"address": address, "code": reply.code, "message": reply.message}
            (deferred if 400 <= reply.code < 500 else rejected).append(refusal)
    wanted = mail.code == 250 and len(rejected) + len(deferred) < len(recipients)
    if start.code == 354 and not wanted:
        # The server waits for a message we will not send: only closing ends that.
        smtp.close()
    if mail.code != 250:
        raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
    if not wanted:
        await _reset(smtp)
        return Accepted(None, rejected, deferred)
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    if state.before_data is not None:
        # The caller's ledger mark, before a byte of the message is sent. If
        # it cannot be written, the message is not sent: the server is
        # waiting for it, so the connection is closed.
        try:
            await state.before_data()
        except BaseException:
            smtp.close()
            raise
    state.in_data = True
    with Pipeline(smtp) as pipe:
        try:
            pipe.write(message_data(data))
            reply = await pipe.reply()
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            raise _DataPhaseLost(exc) from exc
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return Accepted(reply.message, rejected, deferred)


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, ConnectionError, ssl.SSLError):
        smtp.close()
