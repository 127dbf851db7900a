"""A real SMTP server for the tests: aiosmtpd on a free port, recording and scriptable.

It records each message (envelope and parsed content) and, on demand,
answers DATA or RCPT with a 4xx/5xx reply, delays DATA, holds the first RCPT
to an address until the test releases it, or drops the connection after DATA.
It offers PIPELINING (RFC 2920) in its EHLO reply, as
Postfix and most providers do, unless ``pipelining`` is turned off: aiosmtpd
reads pipelined commands in order either way, but does not say so itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    at: float


def email_id_of(message: EmailMessage) -> str:
    """The email id our Message-ID carries (``<...{id}@domain>``)."""
    return str(message["Message-ID"]).strip("<>").split("@")[0].split(".")[-1]


class RecordingHandler:
    """Keeps every accepted message; replies follow the script the test sets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.data_replies: deque[str] = deque()
        self.rcpt_replies: dict[str, str] = {}
        self.data_delay = 0.0
        self.rcpt_delay = 0.0
        self.rcpt_delays: dict[str, float] = {}
        self.drop_after_data = 0
        self.connections = 0
        self.data_hook: Callable[[], None] | None = None
        # The first RCPT to an address waits until its event is set (``holding`` once it waits).
        self.rcpt_holds: dict[str, threading.Event] = {}
        self.holding: dict[str, threading.Event] = {}
        self.pipelining = True

    def reset(self) -> None:
        with self.lock:
            for event in [*self.rcpt_holds.values(), *self.holding.values()]:
                event.set()
            self.rcpt_holds.clear()
            self.holding.clear()
            self.messages.clear()
            self.data_replies.clear()
            self.rcpt_replies.clear()
            self.data_delay = 0.0
            self.rcpt_delay = 0.0
            self.rcpt_delays.clear()
            self.drop_after_data = 0
            self.connections = 0
            self.data_hook = None
            self.pipelining = True

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
            if self.pipelining:
                responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            hold = self.rcpt_holds.pop(address, None)
            if hold is not None:
                self.holding[address] = hold
        if hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, hold.wait, 60)
        delay = self.rcpt_delays.get(address, self.rcpt_delay)
        if delay:
            await asyncio.sleep(delay)
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            reply = self.data_replies.popleft() if self.data_replies else None
        if self.data_hook is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.data_hook)
        if reply:
            return reply
        raw = envelope.original_content or envelope.content
        parsed = message_from_bytes(raw, policy=default)
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), raw, parsed, time.time())  # type: ignore[arg-type]
            )
            drop = self.drop_after_data > 0
            if drop:
                self.drop_after_data -= 1
        if drop:
            # Accepted and stored, but the client never hears the 250.
            server.transport.close()
            return "250 never seen"
        return "250 Message accepted for delivery"

    def deliveries(self) -> dict[str, int]:
        """How many times each email id (from Message-ID) reached this server."""
        counts: dict[str, int] = {}
        with self.lock:
            for received in self.messages:
                email_id = email_id_of(received.message)
                counts[email_id] = counts.get(email_id, 0) + 1
        return counts

    def by_subject(self, subject: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.message["Subject"] == subject]


class SmtpServer:
    """aiosmtpd Controller around a RecordingHandler on 127.0.0.1 and a free port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = RecordingHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
