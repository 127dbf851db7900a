"""Who is signed in to the console: a signed session cookie, CSRF tokens, roles, sign-in limits.

The cookie holds the signed-in name, a CSRF token, an expiry and a fingerprint
of the credential (a password change or a removed API key ends the session);
the role is read from the settings on every request, so a demotion takes effect
at once. Forms carry the session's CSRF token; a POST without it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, status
from fastapi.responses import Response

from neoforge.console.passwords import accounts
from neoforge.runtime import current
from neoforge.settings import Settings, get_settings
from neoforge.store.keys import CONSOLE_SECRET, signin_key

__all__ = [
    "COOKIE",
    "Session",
    "check_csrf",
    "key_fingerprint",
    "new_session",
    "read_session",
    "signin_allowed",
    "signin_failed",
    "write_cookie",
]

COOKIE = "neoforge_console"
_WINDOW = 900  # seconds of the failed sign-in window


@dataclass(frozen=True)
class Session:
    """A visitor of the console: signed in (``name`` and ``role``) or not yet (for the sign-in form)."""

    csrf: str
    name: str = ""
    role: str = ""
    kind: str = ""  # "user" or "key"
    fingerprint: str = ""
    expires: float = 0.0

    @property
    def signed_in(self) -> bool:
        return bool(self.name)

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def _secret(settings: Settings) -> bytes:
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    client = current().redis
    found = client.get(CONSOLE_SECRET)  # a read first: a full Redis still serves the console
    if found is None:
        # One random key for every API process, made by whichever asks first.
        client.set(CONSOLE_SECRET, secrets.token_hex(32), nx=True)
        found = client.get(CONSOLE_SECRET)
    return str(found).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: dict[str, Any], settings: Settings) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(_secret(settings), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def _unsign(value: str, settings: Settings) -> dict[str, Any] | None:
    body, _, mac = value.partition(".")
    expected = hmac.new(_secret(settings), body.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _current_role(payload: dict[str, Any], settings: Settings) -> str:
    """The role the session's credential has now; "" if it no longer exists."""
    fingerprint = str(payload.get("fp", ""))
    if payload.get("kind") == "user":
        account = accounts(settings.console_users).get(str(payload.get("sub", "")))
        return account.role if account is not None and account.fingerprint == fingerprint else ""
    if payload.get("kind") == "key" and settings.console_api_key_role != "none":
        known = any(hmac.compare_digest(key_fingerprint(k), fingerprint) for k in settings.api_keys)
        return settings.console_api_key_role if known else ""
    return ""


def read_session(request: Request) -> Session:
    """The visitor's session from its cookie; a fresh anonymous one if none is valid."""
    settings = get_settings()
    raw = request.cookies.get(COOKIE)
    payload = _unsign(raw, settings) if raw else None
    if payload is None or float(payload.get("exp", 0)) < time.time() or not payload.get("csrf"):
        return Session(csrf=secrets.token_urlsafe(24), expires=time.time() + 3600)
    role = _current_role(payload, settings) if payload.get("sub") else ""
    return Session(
        csrf=str(payload["csrf"]),
        name=str(payload.get("sub", "")) if role else "",
        role=role,
        kind=str(payload.get("kind", "")) if role else "",
        fingerprint=str(payload.get("fp", "")) if role else "",
        expires=float(payload["exp"]),
    )


def new_session(name: str, kind: str, fingerprint: str) -> Session:
    """A signed-in session with a new CSRF token (never the one used before signing in)."""
    seconds = get_settings().console_session_seconds
    return Session(secrets.token_urlsafe(24), name, "", kind, fingerprint, time.time() + seconds)


def write_cookie(response: Response, request: Request, session: Session | None) -> None:
    """Set (or, for None, clear) the session cookie: HttpOnly, SameSite=Strict, Secure over https."""
    settings = get_settings()
    secure = request.url.scheme == "https"
    if session is None:
        response.delete_cookie(COOKIE, path="/console", secure=secure, httponly=True, samesite="strict")
        return
    payload = {"csrf": session.csrf, "exp": session.expires}
    if session.name:
        payload.update(sub=session.name, kind=session.kind, fp=session.fingerprint)
    response.set_cookie(
        COOKIE, _sign(payload, settings), max_age=max(1, int(session.expires - time.time())),
        path="/console", secure=secure, httponly=True, samesite="strict",
    )  # fmt: skip


def check_csrf(request: Request, session: Session, token: str) -> None:
    """Refuse (403) a form whose token is not the session's, or that comes from another site."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "form from another site")
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the page")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def signin_allowed(request: Request) -> bool:
    """False once this client address has CONSOLE_SIGNIN_LIMIT failed sign-ins in the last window.

    A sliding window (a sorted set of failure times): a fixed one would forgive every failure at
    its boundary, a few seconds after the limit was reached.
    """
    key = signin_key(_client(request))
    with current().redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", time.time() - _WINDOW)
        pipe.zcard(key)
        used = pipe.execute()[-1]
    return int(used) < get_settings().console_signin_limit


def signin_failed(request: Request) -> None:
    """Count one failed sign-in from this client address."""
    key = signin_key(_client(request))
    with current().redis.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {uuid.uuid4().hex: time.time()})
        pipe.expire(key, _WINDOW)
        pipe.execute()
