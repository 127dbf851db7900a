"""SMTP PIPELINING (RFC 2920): the envelope in one round trip, each recipient still answered on its own.

The server here answers an envelope only once DATA has come with it, so a
client that waits for each reply before the next command hangs: these tests
fail without pipelining. (Every test against tests/smtp_server.py and Postfix
goes through the pipelined dialogue too: both offer PIPELINING.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from neoforge.settings import get_settings
from neoforge.smtp.dialogue import Accepted, deliver
from neoforge.smtp.pool import Pool
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("environment")

_DATA = b"Subject: pipelined\r\n\r\nHello\r\n.leading dot\r\n"


class StrictServer:
    """Offers PIPELINING and replies to MAIL/RCPT/DATA only once the whole group is in."""

    def __init__(self, rcpt_replies: dict[str, str]) -> None:
        self.rcpt_replies = rcpt_replies
        self.events: list[str] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.sessions: list[asyncio.Task[Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        self.sessions.append(asyncio.ensure_future(self._session(reader, writer)))
        await asyncio.wait([self.sessions[-1]])

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.sessions:
            await asyncio.wait(self.sessions, timeout=5)
        for session in self.sessions:
            if not session.done() or session.cancelled():
                continue
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                session.result()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-strict\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        while True:
            group: list[bytes] = []
            while not group or not group[-1].upper().startswith(b"DATA"):
                line = await reader.readline()
                if not line or line.upper().startswith(b"QUIT"):
                    writer.close()
                    return
                if line.upper().startswith(b"RSET"):
                    writer.write(b"250 reset\r\n")
                    continue
                group.append(line)
            self.events.append("envelope")
            replies, accepted = [b"250 sender ok"], 0
            for line in group[1:-1]:
                address = line.decode().partition("<")[2].rstrip(">\r\n")
                reply = self.rcpt_replies.get(address, "250 recipient ok")
                accepted += reply.startswith("2")
                replies.append(reply.encode())
            replies.append(b"354 go ahead" if accepted else b"554 no valid recipients")
            writer.write(b"".join(r + b"\r\n" for r in replies))
            if accepted:
                body = await reader.readuntil(b"\r\n.\r\n")
                self.events.append("body")
                self.messages.append(body)
                writer.write(b"250 2.0.0 queued as 1\r\n")


def _run(server: StrictServer, scenario: Callable[[Pool], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        pool = Pool(get_settings().model_copy(update={"smtp_port": port}))
        try:
            return await scenario(pool)
        finally:
            pool.close_all()
            listener.close()
            await server.close()
            await listener.wait_closed()

    return asyncio.run(main())


def test_envelope_in_one_round_trip_each_recipient_answered() -> None:
    server = StrictServer(
        {"gone@example.com": "550 5.1.1 No such user", "grey@example.com": "450 4.2.0 Greylisted"}
    )
    marks: list[list[str]] = []

    async def mark() -> None:
        marks.append(list(server.events))

    async def scenario(pool: Pool) -> Accepted:
        recipients = ["ok@example.com", "gone@example.com", "grey@example.com"]
        return await deliver(pool, "from@example.com", _DATA, recipients, timeout=5, before_data=mark)

    accepted = _run(server, scenario)
    assert accepted.reply is not None and "queued" in accepted.reply
    assert [(r["address"], r["code"]) for r in accepted.rejected] == [("gone@example.com", 550)]
    assert [(r["address"], r["code"]) for r in accepted.deferred] == [("grey@example.com", 450)]
    # The ledger mark came after the envelope's replies and before the message.
    assert marks == [["envelope"]]
    assert server.events == ["envelope", "body"]
    assert server.messages == [b"Subject: pipelined\r\n\r\nHello\r\n..leading dot\r\n.\r\n"]


def test_mark_refused_sends_nothing_and_the_next_email_reconnects() -> None:
    server = StrictServer({"grey@example.com": "450 4.2.0 Greylisted"})

    async def refused() -> None:
        raise redis.ConnectionError("Redis went away")

    async def scenario(pool: Pool) -> tuple[Accepted, Accepted]:
        with pytest.raises(redis.ConnectionError):
            await deliver(pool, "from@example.com", _DATA, ["a@example.com"], timeout=5, before_data=refused)
        assert server.messages == []  # the server had said 354, and got no message
        # Every recipient deferred: no DATA, the connection stays usable.
        deferred = await deliver(pool, "from@example.com", _DATA, ["grey@example.com"], timeout=5)
        sent = await deliver(pool, "from@example.com", _DATA, ["b@example.com"], timeout=5)
        return deferred, sent

    deferred, sent = _run(server, scenario)
    assert deferred.reply is None and [r["code"] for r in deferred.deferred] == [450]
    assert sent.reply is not None
    assert len(server.messages) == 1
    assert server.connections == 2  # the refused mark closed its connection; the next two share one


def test_server_closing_an_idle_connection_is_not_a_failure() -> None:
    server = StrictServer({})

    async def scenario(pool: Pool) -> Accepted:
        await deliver(pool, "from@example.com", _DATA, ["a@example.com"], timeout=5)
        for writer in server.writers:
            writer.close()
        return await deliver(pool, "from@example.com", _DATA, ["b@example.com"], timeout=5)

    accepted = _run(server, scenario)
    assert accepted.reply is not None
    assert len(server.messages) == 2 and server.connections == 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "step-by-step"])
def test_each_recipient_answered_by_aiosmtpd(smtp_server: SmtpServer, pipelining: bool) -> None:
    handler = smtp_server.handler
    handler.pipelining = pipelining
    handler.rcpt_replies.update(
        {"gone@example.com": "550 5.1.1 No such user", "grey@example.com": "451 4.7.1 Later"}
    )
    recipients = ["ok@example.com", "gone@example.com", "grey@example.com"]

    async def main() -> tuple[Accepted, bool]:
        pool = Pool(get_settings())
        try:
            accepted = await deliver(pool, "from@example.com", _DATA, recipients, timeout=5)
            return accepted, pool.idle[-1][0].supports_extension("pipelining")
        finally:
            pool.close_all()

    accepted, offered = asyncio.run(main())
    assert offered is pipelining
    assert accepted.reply is not None
    assert [r["code"] for r in accepted.rejected] == [550] and [r["code"] for r in accepted.deferred] == [451]
    [received] = handler.messages
    assert received.rcpt_tos == ["ok@example.com"]
