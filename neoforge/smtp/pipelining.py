"""RFC 2920 PIPELINING: MAIL, every RCPT and DATA written at once, their replies read in order.

aiosmtplib reads exactly one reply per command it writes: its protocol keeps
no reply that arrives while no command of its own waits (aiosmtplib/protocol.py,
``data_received``), so it cannot read a pipelined group. For the envelope and
the message of one transaction the connection's transport is handed to a small
reader of ours with asyncio's public ``Transport.set_protocol``, and handed
back once every reply written for has been read; greeting, EHLO, STARTTLS,
AUTH, RSET and QUIT stay aiosmtplib's. A connection lost meanwhile is passed
on to aiosmtplib's protocol, so the ``SMTP`` object knows it is closed.

Failures are aiosmtplib's own exceptions (``SMTPServerDisconnected``,
``SMTPReadTimeoutError``), so they are classified as before.
"""

from __future__ import annotations

import asyncio
import re
from types import TracebackType

import aiosmtplib
from aiosmtplib import SMTPResponse

__all__ = ["Pipeline", "command", "message_data", "offered"]

_MAX_REPLY = 32 * 1024  # bytes of one reply (aiosmtplib's bound too)
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


async def offered(smtp: aiosmtplib.SMTP) -> bool:
    """True when the server's EHLO offered PIPELINING (EHLO, or HELO, is sent first if not yet)."""
    # aiosmtplib greets lazily: without TLS or a login, a new connection has
    # not said EHLO yet (it would, before its first MAIL), so nothing is known.
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not smtp.is_connected:
                raise
            await smtp.helo()
    return smtp.supports_extension("pipelining")


def command(verb: bytes, address: str) -> bytes:
    """``MAIL FROM:<address>`` or ``RCPT TO:<address>`` as one line; ValueError for a bad address."""
    path = address.encode("ascii")  # UnicodeEncodeError is a ValueError: a permanent failure
    if _CONTROL.search(path):
        raise ValueError("address contains a control character")
    return verb + b":<" + path + b">\r\n"


def message_data(data: bytes) -> bytes:
    """DATA's content as it goes on the wire: CRLF line endings, leading dots doubled, the final dot."""
    # Counting first is several times cheaper than a substitution that finds
    # nothing to change, the usual case (our MIME builder writes CRLF).
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_PERIOD.sub(b"..", data)
    return data + b".\r\n"


class _Replies(asyncio.Protocol):
    """Collects what the server sends while a pipelined group is out; passes the rest to INNER."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.buffer = bytearray()
        self.lost: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        self._wake()

    def eof_received(self) -> bool:
        self.lost = aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._wake()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def reply(self) -> SMTPResponse | None:
        """The first whole reply in the buffer (removed from it), or None."""
        offset, lines = 0, []
        while (end := self.buffer.find(b"\n", offset)) != -1:
            line = bytes(self.buffer[offset : end + 1])
            offset = end + 1
            try:
                code = int(line[:3])
            except ValueError:
                raise aiosmtplib.SMTPResponseException(
                    -1, f"Malformed SMTP response line: {line.decode('utf-8', 'replace')}"
                ) from None
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self.buffer[:offset]
                return SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))
        if len(self.buffer) > _MAX_REPLY:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        return None


class Pipeline:
    """The transport of SMTP, ours for one pipelined exchange (``with``): write, then read the replies."""

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        transport = smtp.transport
        if transport is None or transport.is_closing() or smtp.protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.timeout = smtp.timeout
        self._replies = _Replies(smtp.protocol)

    def __enter__(self) -> Pipeline:
        self.transport.set_protocol(self._replies)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.transport.is_closing():
            self.transport.set_protocol(self._replies.inner)

    def write(self, data: bytes) -> None:
        if self.transport.is_closing() or self._replies.lost is not None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def reply(self) -> SMTPResponse:
        """The server's next reply; SMTPServerDisconnected or SMTPReadTimeoutError if none comes."""
        replies = self._replies
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        while (found := replies.reply()) is None:
            if replies.lost is not None:
                raise aiosmtplib.SMTPServerDisconnected(str(replies.lost))
            replies.waiter = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await replies.waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                replies.waiter = None
        return found
