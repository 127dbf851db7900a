"""Hand a message to the SMTP server and say how it went.

fastapi-mail builds the MIME message from its ``MessageSchema``; aiosmtplib
carries it, step by step (MAIL, RCPT, DATA), so that every failure keeps the
server's exact reply code and the phase it happened in. fastapi-mail's own
``send_message`` is not used: it opens a connection per email and turns
connection-phase failures into a generic ``ConnectionErrors`` (see
fastapi_mail/connection.py), which would erase the code that decides retry
versus dead letter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.message import Message
from email.utils import make_msgid
from typing import Any, TypeVar

import aiosmtplib
from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType, MultipartSubtypeEnum
from starlette.datastructures import Headers, UploadFile

from neoforge.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from neoforge.message import EmailRequest
from neoforge.redact import mask_addresses
from neoforge.settings import Settings, get_settings
from neoforge.templates import Rendered

__all__ = [
    "Accepted",
    "build_message",
    "bulk_connections",
    "close_connections",
    "deliver",
    "run_in_worker_loop",
    "submit",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Accepted:
    """The server took the message; ``refused`` lists recipients it turned away."""

    reply: str
    refused: list[dict[str, Any]] = field(default_factory=list)


_builders: dict[int, tuple[Settings, FastMail]] = {}


def _mail(settings: Settings) -> FastMail:
    cached = _builders.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    # fastapi-mail only builds the message here; the connection fields are
    # required by its config model but never used to connect.
    config = ConnectionConfig(
        MAIL_USERNAME=settings.smtp_user or "",
        MAIL_PASSWORD=settings.smtp_password or "",
        MAIL_FROM=settings.smtp_from,
        MAIL_FROM_NAME=settings.smtp_from_name,
        MAIL_PORT=settings.smtp_port,
        MAIL_SERVER=settings.smtp_host,
        MAIL_STARTTLS=settings.smtp_starttls,
        MAIL_SSL_TLS=settings.smtp_ssl_tls,
        USE_CREDENTIALS=False,
    )
    mail = FastMail(config)
    _builders.clear()
    _builders[id(settings)] = (settings, mail)
    return mail


async def build_message(email_id: str, request: EmailRequest, body: Rendered) -> Message:
    """The MIME message for REQUEST: text and HTML alternatives, attachments, our Message-ID."""
    settings = get_settings()
    # Plain text first and HTML second: in multipart/alternative the last part
    # is the preferred one.
    if body.text is not None and body.html is not None:
        main, alternative, subtype = body.text, body.html, MessageType.plain
        multipart = MultipartSubtypeEnum.alternative
    elif body.html is not None:
        main, alternative, subtype = body.html, None, MessageType.html
        multipart = MultipartSubtypeEnum.mixed
    else:
        main, alternative, subtype = body.text or "", None, MessageType.plain
        multipart = MultipartSubtypeEnum.mixed
    schema = MessageSchema(
        recipients=list(request.to),
        cc=list(request.cc),
        reply_to=list(request.reply_to),
        subject=request.subject,
        body=main,
        alternative_body=alternative,
        subtype=subtype,
        multipart_subtype=multipart,
        headers=dict(request.headers) or None,
        attachments=[
            UploadFile(
                file=io.BytesIO(item.data()),
                filename=item.filename,
                headers=Headers({"content-type": item.content_type}),
            )
            for item in request.attachments
        ],
    )
    message = await _mail(settings).get_message(schema)
    if not isinstance(message, Message):
        raise PermanentDeliveryError("message could not be built")
    # fastapi-mail sets a charset (and so a base64 transfer encoding) on the
    # multipart container itself, which MIME forbids: keep them on the parts.
    if message.is_multipart():
        del message["Content-Transfer-Encoding"]
        message.del_param("charset")
    # Bcc stays in the envelope only; the id in Message-ID lets a support
    # engineer match a received mail to its status record.
    domain = settings.smtp_from.rpartition("@")[2]
    # fastapi-mail's NameEmail invents a display name from the local part
    # ("alice <alice@example.com>"): write the addresses as given.
    for header, addresses in (("To", request.to), ("Cc", request.cc), ("Reply-To", request.reply_to)):
        if addresses:
            message.replace_header(header, ", ".join(addresses))
    del message["Message-ID"]
    message["Message-ID"] = make_msgid(idstring=email_id, domain=domain)
    # Our own boundaries: without one, the email package draws a random one and
    # compiles a regular expression to check it against the content, a third
    # of the MIME cost per email (py-spy on bench/). 128 random bits cannot
    # turn up in the content by chance.
    for part in message.walk():
        if part.is_multipart():
            part.set_boundary(f"=_{uuid.uuid4().hex}")
    return message


def _classify(exc: BaseException, phase: str) -> DeliveryError:
    """Map an aiosmtplib or socket failure to transient (retry) or permanent (dead letter)."""
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


class _Pool:
    """Reusable SMTP connections of this process's sender loop, at most SMTP_MAX_CONNECTIONS in use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.idle: list[tuple[aiosmtplib.SMTP, float, int]] = []
        self.slots = asyncio.Semaphore(settings.smtp_max_connections)
        # Bulk mail may hold at most four fifths of them: the rest is kept for
        # transactional mail, which never queues behind a bulk backlog here.
        self.bulk_slots = asyncio.Semaphore(bulk_connections(settings))

    async def connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout,
            use_tls=s.smtp_ssl_tls,
            start_tls=s.smtp_starttls,
            validate_certs=s.smtp_validate_certs,
        )
        await smtp.connect()
        if s.smtp_user and s.smtp_password:
            encrypted = smtp.get_transport_info("sslcontext") is not None
            if not encrypted and not s.smtp_allow_plaintext_auth:
                smtp.close()
                raise PermanentDeliveryError(
                    "refusing to send SMTP_PASSWORD over a connection without TLS "
                    "(set SMTP_STARTTLS or SMTP_SSL_TLS; SMTP_ALLOW_PLAINTEXT_AUTH only for a local catcher)",
                    None,
                    "bad_config",
                )
            await smtp.login(s.smtp_user, s.smtp_password.get_secret_value())
        return smtp

    def take(self) -> tuple[aiosmtplib.SMTP, int] | None:
        while self.idle:
            smtp, since, used = self.idle.pop()
            if smtp.is_connected and time.monotonic() - since < _IDLE_SECONDS:
                return smtp, used
            smtp.close()
        return None

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop()[0].close()

    def give_back(self, smtp: aiosmtplib.SMTP, used: int) -> None:
        if used >= _MESSAGES_PER_CONNECTION or not smtp.is_connected:
            smtp.close()
        else:
            self.idle.append((smtp, time.monotonic(), used))


_IDLE_SECONDS = 30.0
_MESSAGES_PER_CONNECTION = 100


async def _transmit(
    smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes, state: _Dialogue
) -> Accepted:
    state.in_data = False
    await smtp.mail(sender)
    refused = []
    for address in recipients:
        try:
            await smtp.rcpt(address)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused.append(exc)
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    if state.before_data is not None:
        # The caller's ledger mark: from here on the message may reach the
        # server, so a crash must not lead to a second copy. If the mark
        # cannot be written, nothing is sent.
        state.before_data()
    state.in_data = True
    try:
        reply = await smtp.data(data)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
        raise _DataPhaseLost(exc) from exc
    return Accepted(
        reply=reply.message,
        refused=[{"address": r.recipient, "code": r.code, "message": r.message} for r in refused],
    )


class _DataPhaseLost(Exception):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


def bulk_connections(settings: Settings) -> int:
    """How many of SMTP_MAX_CONNECTIONS bulk mail may use at once."""
    total = settings.smtp_max_connections
    return max(1, total - max(1, total // 5))


async def deliver(
    message: Message,
    recipients: list[str],
    timeout: float | None = None,
    bulk: bool = False,
    before_data: Callable[[], None] | None = None,
) -> Accepted:
    """Send MESSAGE to RECIPIENTS; raise TransientDeliveryError or PermanentDeliveryError.

    BULK mail waits for one of its share of the connections (``bulk_connections``).
    BEFORE_DATA is called (on the sender loop, so it must be quick) right before
    the DATA command; if it raises, the dialogue ends there and nothing is sent.

    TIMEOUT bounds the whole SMTP dialogue (connect included): Celery's threads
    pool has no hard time limit, and the email's lease relies on the attempt
    ending within the task time limit. A dialogue cut short during DATA may
    have delivered the message: it is reported as ``outcome_unknown``.
    """
    settings = get_settings()
    pool = _pool(settings)
    data = message.as_bytes()
    state = _Dialogue(before_data=before_data)
    try:
        async with (
            asyncio.timeout(timeout),
            pool.bulk_slots if bulk else contextlib.nullcontext(),
            pool.slots,
        ):
            return await _deliver(pool, settings.smtp_from, recipients, data, state)
    except TimeoutError as exc:
        if state.smtp is not None:
            state.smtp.close()  # in an unknown state: never back to the pool
        if state.in_data:
            raise PermanentDeliveryError(
                "outcome unknown, time limit reached during DATA", None, "outcome_unknown"
            ) from exc
        raise TransientDeliveryError(f"timed out after {timeout:.0f} s", None, "timeout") from exc


@dataclass
class _Dialogue:
    """How far one delivery got, for the verdict when its deadline cuts it short."""

    smtp: aiosmtplib.SMTP | None = None
    in_data: bool = False
    before_data: Callable[[], None] | None = None


async def _deliver(
    pool: _Pool, sender: str, recipients: list[str], data: bytes, state: _Dialogue
) -> Accepted:
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
            raise _classify(exc.cause, "data") from exc.cause
        except Exception as exc:
            await _reset(smtp)
            pool.give_back(smtp, used + 1)
            raise _classify(exc, "envelope") from exc
        else:
            pool.give_back(smtp, used + 1)
            return accepted
    state.smtp = None
    try:
        smtp = await pool.connect()
    except DeliveryError:
        raise
    except Exception as exc:
        raise _classify(exc, "connect") from exc
    state.smtp = smtp
    try:
        accepted = await _transmit(smtp, sender, recipients, data, state)
    except _DataPhaseLost as exc:
        raise _classify(exc.cause, "data") from exc.cause
    except Exception as exc:
        await _reset(smtp)
        pool.give_back(smtp, 1)
        raise _classify(exc, "envelope") from exc
    pool.give_back(smtp, 1)
    return accepted


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, ConnectionError, ssl.SSLError):
        smtp.close()


_pools: dict[int, _Pool] = {}


def _pool(settings: Settings) -> _Pool:
    """This process's pool (used on the sender loop only); a new one when the settings change."""
    pool = _pools.get(os.getpid())
    if pool is None or pool.settings is not settings:
        if pool is not None:
            pool.close_all()
        pool = _pools[os.getpid()] = _Pool(settings)
    return pool


# One event loop per process, on its own thread, carries every SMTP dialogue:
# task threads (or a prefork child's single thread) hand it coroutines, so
# connections are shared by all tasks of the process and a slow server is
# kept busy by many dialogues at once.
_sender_lock = threading.Lock()
_sender: dict[int, tuple[asyncio.AbstractEventLoop, threading.Thread]] = {}


def _sender_loop() -> asyncio.AbstractEventLoop:
    with _sender_lock:
        found = _sender.get(os.getpid())
        if found is None or found[0].is_closed() or not found[1].is_alive():
            _sender.clear()  # a parent's loop, inherited through fork, is not ours
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="neoforge-smtp", daemon=True)
            thread.start()
            found = _sender[os.getpid()] = (loop, thread)
        return found[0]


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start CORO on this process's sender loop; its future resolves when it ends."""
    return asyncio.run_coroutine_threadsafe(coro, _sender_loop())


def run_in_worker_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run CORO on this process's sender loop and wait for its result."""
    return submit(coro).result()


def close_connections() -> None:
    """Close every pooled SMTP connection and stop the sender loop (at worker shutdown)."""
    with _sender_lock:
        found = _sender.pop(os.getpid(), None)
    if found is None:
        return
    loop, thread = found

    async def close() -> None:
        pool = _pools.pop(os.getpid(), None)
        if pool is not None:
            pool.close_all()

    with contextlib.suppress(RuntimeError):
        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()
