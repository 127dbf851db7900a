"""One-click unsubscribe (RFC 8058) for bulk mail: the headers, and the signed token they carry.

A bulk email (priority ``bulk``) with a ``List-Id`` header and one recipient
gets, when EMAIL_UNSUBSCRIBE_URL is set (and the caller gave no
List-Unsubscribe of its own)::

    List-Unsubscribe: <https://…/unsubscribe/TOKEN>, <mailto:…?subject=unsubscribe>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

The token names the list id, the recipient's address hash (never the address),
its masked form and the email id, signed with HMAC-SHA256 under
EMAIL_UNSUBSCRIBE_SECRET. ``POST /unsubscribe/TOKEN`` (no login, as the RFC
wants) suppresses that address for that list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote

from neoforge.message import EmailRequest
from neoforge.redact import mask_address
from neoforge.settings import Settings
from neoforge.store.keys import address_digest
from neoforge.suppression import list_id

__all__ = ["BadToken", "Unsubscribe", "headers", "make_token", "read_token"]

_MAC_BYTES = 20


class BadToken(ValueError):
    """Raised when an unsubscribe token is malformed or its signature does not match."""


@dataclass(frozen=True)
class Unsubscribe:
    """What a token says: unsubscribe the address with DIGEST (shown as MASKED) from LIST_ID."""

    list_id: str
    digest: str
    masked: str
    email_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: str, list_name: str, address: str, email_id: str) -> str:
    """The token for ADDRESS's unsubscribe from LIST_NAME, sent in EMAIL_ID."""
    payload = _b64(json.dumps([list_name, address_digest(address), mask_address(address), email_id],
                              separators=(",", ":")).encode())  # fmt: skip
    return f"{payload}.{_b64(_mac(secret, payload))}"


def read_token(secret: str, token: str) -> Unsubscribe:
    """What TOKEN says; raise BadToken unless it was signed with SECRET."""
    payload, _, mac = token.partition(".")
    try:
        good = hmac.compare_digest(_unb64(mac), _mac(secret, payload))
        fields = json.loads(_unb64(payload)) if good else None
    except (binascii.Error, ValueError) as exc:
        raise BadToken("malformed unsubscribe link") from exc
    shaped = isinstance(fields, list) and len(fields) == 4 and all(isinstance(f, str) for f in fields)
    if not good or not shaped:
        raise BadToken("this unsubscribe link is not valid")
    return Unsubscribe(*cast(list[str], fields))


def headers(email_id: str, request: EmailRequest, settings: Settings) -> dict[str, str]:
    """The List-Unsubscribe headers to add to REQUEST (none if it does not qualify)."""
    base, secret = settings.email_unsubscribe_url, settings.email_unsubscribe_secret
    if base is None or secret is None or request.priority != "bulk":
        return {}
    if any(name.lower() == "list-unsubscribe" for name in request.headers):
        return {}
    name, recipients = list_id(request.headers), request.recipients()
    if not name or len(recipients) != 1:
        return {}
    token = make_token(secret.get_secret_value(), name, recipients[0], email_id)
    links = [f"<{base}/unsubscribe/{token}>"]
    if settings.email_unsubscribe_mailto:
        links.append(f"<mailto:{settings.email_unsubscribe_mailto}?subject={quote('unsubscribe ' + token)}>")
    return {"List-Unsubscribe": ", ".join(links), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
