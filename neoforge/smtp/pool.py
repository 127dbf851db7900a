"""Reusable SMTP connections of one process's sender loop, at most SMTP_MAX_CONNECTIONS in use."""

from __future__ import annotations

import asyncio
import time

import aiosmtplib

from neoforge.errors import ErrorClass, SetupError
from neoforge.settings import Settings

__all__ = ["Pool", "bulk_connections"]

_IDLE_SECONDS = 30.0
_MESSAGES_PER_CONNECTION = 100


def bulk_connections(settings: Settings) -> int:
    """How many of SMTP_MAX_CONNECTIONS bulk mail may use at once."""
    total = settings.smtp_max_connections
    return max(1, total - max(1, total // 5))


class Pool:
    """Idle connections to reuse, and the slots that cap connections in use (on the sender loop only)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.idle: list[tuple[aiosmtplib.SMTP, float, int]] = []
        self.slots = asyncio.Semaphore(settings.smtp_max_connections)
        # Bulk mail may hold at most four fifths of them: the rest is kept for
        # transactional mail, which never queues behind a bulk backlog here.
        self.bulk_slots = asyncio.Semaphore(bulk_connections(settings))

    async def connect(self) -> aiosmtplib.SMTP:
        """A new connection, TLS and login done; closed again if any step fails."""
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout,
            use_tls=s.smtp_ssl_tls,
            start_tls=s.smtp_starttls,
            validate_certs=s.smtp_validate_certs,
        )
        try:
            await smtp.connect()
            if s.smtp_user and s.smtp_password:
                encrypted = smtp.get_transport_info("sslcontext") is not None
                if not encrypted and not s.smtp_allow_plaintext_auth:
                    raise SetupError(
                        "refusing to send SMTP_PASSWORD over a connection without TLS (set SMTP_STARTTLS "
                        "or SMTP_SSL_TLS; SMTP_ALLOW_PLAINTEXT_AUTH only for a local catcher)",
                        None,
                        ErrorClass.TLS,
                    )
                await smtp.login(s.smtp_user, s.smtp_password.get_secret_value())
        except BaseException:
            # A failed login or STARTTLS must not leave the session open at the server.
            smtp.close()
            raise
        return smtp

    def take(self) -> tuple[aiosmtplib.SMTP, int] | None:
        """An idle connection still worth using, with how many messages it carried."""
        while self.idle:
            smtp, since, used = self.idle.pop()
            if smtp.is_connected and time.monotonic() - since < _IDLE_SECONDS:
                return smtp, used
            smtp.close()
        return None

    def give_back(self, smtp: aiosmtplib.SMTP, used: int) -> None:
        if used >= _MESSAGES_PER_CONNECTION or not smtp.is_connected:
            smtp.close()
        else:
            self.idle.append((smtp, time.monotonic(), used))

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop()[0].close()
