"""Check the SMTP server as configured (greeting, EHLO, TLS, login, QUIT) and say in one line what is wrong.

Used by ``neoforge check``, ``GET /health/ready`` and the worker's start-up log.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiosmtplib

from neoforge.errors import DeliveryError, ErrorClass
from neoforge.redact import mask_addresses
from neoforge.settings import Settings
from neoforge.smtp.classify import classify
from neoforge.smtp.pool import for_endpoint, open_connection, tls_context

__all__ = ["PROBE_TIMEOUT", "Check", "check_smtp", "check_smtp_blocking"]

PROBE_TIMEOUT = 10.0  # seconds at most, whatever SMTP_TIMEOUT says: a health check must answer soon

# Words for the classes whose classified text does not say what went wrong.
_HEADS: dict[str, str] = {ErrorClass.CONNECTION: "cannot connect", ErrorClass.TIMEOUT: "timed out"}


@dataclass(frozen=True)
class Check:
    """The outcome of a check: ``line`` is the one line to show (never the password)."""

    ok: bool
    line: str
    error_class: str | None = None


async def check_smtp(settings: Settings) -> Check:
    """Connect as the pool does, then QUIT; the whole check is bounded by min(SMTP_TIMEOUT, 10 s).

    With several providers (SMTP_URLS) each is checked, side by side: ok when
    at least one works (failover sends through it), and the line names each.
    """
    if settings.smtp_urls is None:
        return await _check_one(settings)
    endpoints = settings.endpoints()
    checks = await asyncio.gather(*(_check_one(for_endpoint(settings, e)) for e in endpoints))
    lines = (f"{e.name}: {c.line.removeprefix('smtp: ')}" for e, c in zip(endpoints, checks, strict=True))
    line = "; ".join(lines)
    failed = next((c.error_class for c in checks if not c.ok), None)
    return Check(any(c.ok for c in checks), f"smtp: {line}", failed)


async def _check_one(settings: Settings) -> Check:
    limit = min(settings.smtp_timeout, PROBE_TIMEOUT)
    try:
        async with asyncio.timeout(limit):
            # Reads SMTP_CA_FILE: not on the event loop.
            context = await asyncio.to_thread(tls_context, settings)
            smtp = await open_connection(settings, context, limit)
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()  # login worked; a server that hangs up on QUIT is still usable
            # A few turns of the loop, so a TLS connection finishes closing
            # before a caller's asyncio.run() closes the loop under it.
            for _ in range(5):
                await asyncio.sleep(0.01)
    except TimeoutError:
        return _failed(f"no complete answer within {limit:g} s", ErrorClass.TIMEOUT)
    except Exception as exc:
        try:
            error = classify(exc, "connect")
        except Exception:
            # Not an SMTP or network failure: say what it was rather than hide it.
            return _failed(f"{type(exc).__name__}: {mask_addresses(str(exc))}", ErrorClass.INTERNAL)
        return _describe(error)
    return Check(True, f"smtp: ok ({_describe_setup(settings)})")


def check_smtp_blocking(settings: Settings) -> Check:
    """``check_smtp`` for callers without an event loop (the CLI, a worker's start-up thread)."""
    return asyncio.run(check_smtp(settings))


def _describe(error: DeliveryError) -> Check:
    text = str(error)
    head = _HEADS.get(error.error_class)
    if head is not None:
        text = text.removeprefix(f"{head}: ")
    else:
        # classify's texts start with what went wrong ("login refused: 535 ..."), or are a reply.
        first, sep, rest = text.partition(": ")
        if sep and not first[:1].isdigit():
            head, text = first, rest
        else:
            head = "server refused"
    return _failed(text, error.error_class, head)


def _failed(text: str, error_class: str, head: str | None = None) -> Check:
    head = head or _HEADS.get(error_class, "failed")
    return Check(False, f"smtp: {head} ({error_class}): {text}", error_class)


def _describe_setup(settings: Settings) -> str:
    s = settings
    parts = [f"{s.smtp_host}:{s.smtp_port}"]
    if s.smtp_ssl_tls:
        parts.append("TLS")
    elif s.smtp_starttls:
        parts.append("STARTTLS")
    else:
        parts.append("no TLS")
    if (s.smtp_ssl_tls or s.smtp_starttls) and not s.smtp_validate_certs:
        parts.append("certificate NOT verified")
    elif s.smtp_ca_file is not None and (s.smtp_ssl_tls or s.smtp_starttls):
        parts.append("verified against SMTP_CA_FILE")
    if s.smtp_user and s.smtp_password:
        parts.append(f"AUTH as {mask_addresses(s.smtp_user)}")
    else:
        parts.append("no AUTH")
    return ", ".join(parts)
