"""API keys: who may call the API, and how much per minute."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from neoforge.ratelimit import Charge, charge, charge_for, charge_read
from neoforge.runtime import current
from neoforge.settings import get_settings

__all__ = ["Authenticated", "charge_key", "key_charge", "limit_reads", "limit_requests", "require_key"]

_bearer = HTTPBearer(auto_error=False, description="One of the keys in API_KEYS.")


async def require_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Accept only ``Authorization: Bearer <key>`` with a key from API_KEYS."""
    keys = get_settings().api_keys
    if not keys:
        # No keys configured must never mean "open to everyone".
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "API_KEYS is not set: /emails is disabled")
    given = credentials.credentials.encode() if credentials else b""
    matched = False
    for key in keys:  # compare with every key, in constant time each
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return given.decode()


def charge_key(key: str, requests: int, recipients: int) -> None:
    """Charge KEY's per-minute allowances now (one round trip; 429 past them)."""
    charge(current().store, key, requests=requests, recipients=recipients, **_limits())


def key_charge(key: str, requests: int, recipients: int) -> Charge:
    """The same charge, to be counted by the script that records the email (one round trip for both)."""
    return charge_for(key, requests=requests, recipients=recipients, **_limits())


def _limits() -> dict[str, int]:
    settings = get_settings()
    return {
        "max_requests": settings.api_rate_limit_requests,
        "max_recipients": settings.api_rate_limit_recipients,
    }


def limit_requests(key: Annotated[str, Depends(require_key)]) -> str:
    """Charge one request to the key's per-minute allowance (429 past it)."""
    charge_key(key, requests=1, recipients=0)
    return key


def limit_reads(key: Annotated[str, Depends(require_key)]) -> str:
    """Charge one read to the key's per-minute read allowance, API_RATE_LIMIT_READS (429 past it)."""
    charge_read(current().store, key, max_reads=get_settings().api_rate_limit_reads)
    return key


Authenticated = Annotated[str, Depends(require_key)]
