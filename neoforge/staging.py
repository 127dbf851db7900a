"""Staging safety: who actually receives an email (EMAIL_REDIRECT_TO, EMAIL_ALLOWED_DOMAINS)."""

from __future__ import annotations

from typing import Any

from neoforge.settings import Settings

__all__ = ["envelope"]


def envelope(recipients: list[str], settings: Settings) -> tuple[list[str], list[dict[str, Any]]]:
    """The envelope recipients to use, and the recipients held back (as refused entries).

    With EMAIL_REDIRECT_TO every email goes to that one address instead; with
    EMAIL_ALLOWED_DOMAINS, recipients in other domains are held back. Headers
    are left as they are, so the tester sees whom the email was meant for.
    """
    if settings.email_redirect_to:
        return [settings.email_redirect_to], []
    if not settings.email_allowed_domains:
        return recipients, []
    allowed = set(settings.email_allowed_domains)
    kept = [r for r in recipients if r.rpartition("@")[2].lower() in allowed]
    held = [
        {"address": r, "code": 0, "message": "held back: domain not in EMAIL_ALLOWED_DOMAINS"}
        for r in recipients
        if r not in kept
    ]
    return kept, held
