"""SMTP servers for the sending-policy tests: one that enforces a message rate, as relays do."""

from __future__ import annotations

import time
from typing import Any

from aiosmtpd.controller import Controller

from tests.smtp_server import RecordingHandler, SmtpServer

TOO_MUCH_MAIL = "450 4.7.1 Error: too much mail from 127.0.0.1"


class RateLimitedHandler(RecordingHandler):
    """Takes at most PER_WINDOW messages (MAIL commands, as Postfix's anvil counts them) per WINDOW
    seconds, in fixed windows, and answers the rest with 450 "too much mail"."""

    def __init__(self, per_window: int, window: float) -> None:
        super().__init__()
        self.per_window = per_window
        self.window = window
        self.window_start = time.monotonic()
        self.in_window = 0
        self.too_much = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        now = time.monotonic()
        with self.lock:
            if now - self.window_start >= self.window:
                self.window_start, self.in_window = now, 0
            if self.in_window >= self.per_window:
                self.too_much += 1
                return TOO_MUCH_MAIL
            self.in_window += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


class RateLimitedServer(SmtpServer):
    def __init__(self, port: int, per_window: int, window: float) -> None:
        self.port = port
        self.handler: RateLimitedHandler = RateLimitedHandler(per_window, window)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port)
