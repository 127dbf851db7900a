"""Reusable SMTP connections of one process's sender loop, at most SMTP_MAX_CONNECTIONS in use."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import aiosmtplib

from neoforge.endpoints import Endpoint
from neoforge.errors import ErrorClass, SetupError
from neoforge.settings import Settings

__all__ = ["Pool", "bulk_connections", "for_endpoint", "open_connection", "tls_context"]

_MESSAGES_PER_CONNECTION = 100
_QUIT_SECONDS = 5.0  # for a polite QUIT after a refusal, at most


def bulk_connections(settings: Settings) -> int:
    """How many of SMTP_MAX_CONNECTIONS bulk mail may use at once."""
    total = settings.smtp_max_connections
    return max(1, total - max(1, total // 5))


def for_endpoint(settings: Settings, endpoint: Endpoint) -> Settings:
    """SETTINGS with ENDPOINT's server, credentials and TLS in place of SMTP_HOST...: its pool's settings."""
    return settings.model_copy(
        update={
            "smtp_host": endpoint.host,
            "smtp_port": endpoint.port,
            "smtp_user": endpoint.user,
            "smtp_password": endpoint.password,
            "smtp_starttls": endpoint.starttls,
            "smtp_ssl_tls": endpoint.ssl_tls,
        }
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The context verifying the server against SMTP_CA_FILE (hostname checked), or None for the default.

    Reads the file: call it off the event loop, once per pool.
    """
    if settings.smtp_ca_file is None or not settings.smtp_validate_certs:
        return None
    return ssl.create_default_context(cafile=str(settings.smtp_ca_file))


async def open_connection(
    settings: Settings, context: ssl.SSLContext | None, timeout: float
) -> aiosmtplib.SMTP:
    """A new connection (greeting, EHLO, TLS, login done), closed again if any step fails.

    CONTEXT comes from ``tls_context``; TIMEOUT bounds each command.
    """
    s = settings
    smtp = aiosmtplib.SMTP(
        hostname=s.smtp_host,
        port=s.smtp_port,
        timeout=timeout,
        use_tls=s.smtp_ssl_tls,
        start_tls=s.smtp_starttls,
        validate_certs=s.smtp_validate_certs,
        tls_context=context,
    )
    try:
        await smtp.connect()
        if s.smtp_user and s.smtp_password:
            encrypted = smtp.get_transport_info("sslcontext") is not None
            if not encrypted and not s.smtp_allow_plaintext_auth:
                raise SetupError(
                    "login not attempted: SMTP_PASSWORD would go over a connection without TLS (set "
                    "SMTP_STARTTLS or SMTP_SSL_TLS; SMTP_ALLOW_PLAINTEXT_AUTH only for a local catcher)",
                    None,
                    ErrorClass.TLS,
                )
            await smtp.login(s.smtp_user, s.smtp_password.get_secret_value())
    except BaseException as exc:
        # A failed login or STARTTLS must not leave the session open at the server.
        try:
            if isinstance(exc, aiosmtplib.SMTPResponseException | SetupError) and smtp.is_connected:
                # The server said no (a refused login): end the session as it expects, so that
                # it is over at the server before this connection's slot goes to another one.
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit(timeout=min(timeout, _QUIT_SECONDS))
        finally:
            smtp.close()
        raise
    return smtp


class Pool:
    """Idle connections to reuse, and the slots that cap connections in use (on the sender loop only).

    An idle connection is closed after SMTP_IDLE_TIMEOUT by a timer on the
    loop, whether or not another email comes to take it: servers drop idle
    sessions on their own, and a worker with no mail should hold none open.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.idle: list[tuple[aiosmtplib.SMTP, float, int]] = []  # oldest first
        self.slots = asyncio.Semaphore(settings.smtp_max_connections)
        # Bulk mail may hold at most four fifths of them: the rest is kept for
        # transactional mail, which never queues behind a bulk backlog here.
        self.bulk_slots = asyncio.Semaphore(bulk_connections(settings))
        self._context = tls_context(settings)
        self._pruning: asyncio.TimerHandle | None = None

    async def connect(self) -> aiosmtplib.SMTP:
        """A new connection, TLS and login done; closed again if any step fails."""
        return await open_connection(self.settings, self._context, self.settings.smtp_timeout)

    def take(self) -> tuple[aiosmtplib.SMTP, int] | None:
        """An idle connection still worth using, with how many messages it carried."""
        while self.idle:
            smtp, since, used = self.idle.pop()
            if smtp.is_connected and time.monotonic() - since < self.settings.smtp_idle_timeout:
                return smtp, used
            smtp.close()
        return None

    def give_back(self, smtp: aiosmtplib.SMTP, used: int) -> None:
        if used >= _MESSAGES_PER_CONNECTION or not smtp.is_connected:
            smtp.close()
        else:
            self.idle.append((smtp, time.monotonic(), used))
            self._schedule_prune()

    def close_all(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            self._pruning = None
        while self.idle:
            self.idle.pop()[0].close()

    def _schedule_prune(self) -> None:
        # One timer at a time, due when the oldest idle connection expires.
        if self._pruning is not None or not self.idle:
            return
        due = self.idle[0][1] + self.settings.smtp_idle_timeout - time.monotonic()
        self._pruning = asyncio.get_running_loop().call_later(max(0.0, due), self._prune)

    def _prune(self) -> None:
        self._pruning = None
        cutoff = time.monotonic() - self.settings.smtp_idle_timeout
        while self.idle and self.idle[0][1] <= cutoff:
            self.idle.pop(0)[0].close()
        self._schedule_prune()
