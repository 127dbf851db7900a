"""Operator accounts: scrypt password hashes (stdlib, salted) and the CONSOLE_USERS list."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["Account", "accounts", "hash_password", "verify_password"]

# scrypt's cost: 16 MiB and ~50 ms per check, enough to make guessing slow offline.
_N, _R, _P = 2**14, 8, 1
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


@dataclass(frozen=True)
class Account:
    """One entry of CONSOLE_USERS."""

    name: str
    role: str
    hashed: str

    @property
    def fingerprint(self) -> str:
        """Changes with the password: a session signed for the old one stops working."""
        return hashlib.sha256(self.hashed.encode()).hexdigest()[:16]


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for PASSWORD, with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, hashed: str | None) -> bool:
    """True when PASSWORD matches HASHED; an unknown user (None) costs the same time and fails."""
    _, n, r, p, salt, digest = (hashed or _DUMMY).split("$")
    expected = base64.b64decode(digest)
    given = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
        dklen=len(expected), maxmem=256 * int(n) * int(r) + 1024 * 1024,
    )  # fmt: skip
    return hmac.compare_digest(given, expected) and hashed is not None


def accounts(entries: list[str]) -> dict[str, Account]:
    """CONSOLE_USERS (already checked by the settings) by name."""
    found = {}
    for entry in entries:
        name, role, hashed = entry.split(":", 2)
        found[name] = Account(name, role, hashed)
    return found
