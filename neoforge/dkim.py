"""DKIM signing (optional, off by default): DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE.

Signed with dkimpy, rsa-sha256, relaxed/relaxed canonicalization (which
survives a relay refolding headers or trailing whitespace), over the headers
a receiver shows or threads by. The key is read and checked when the
settings are (a clear error at start-up), and read again by no one else.
"""

from __future__ import annotations

from pathlib import Path

import dkim

__all__ = ["SIGNED_HEADERS", "check_key", "sign"]

# The headers a receiver shows or threads by; each is signed when present.
SIGNED_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "In-Reply-To", "References", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post",
)  # fmt: skip


def check_key(path: Path) -> bytes:
    """The PEM private key in PATH; raise ValueError saying why it cannot be used."""
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    try:
        dkim.crypto.parse_pem_private_key(key)
    except dkim.crypto.UnparsableKeyError as exc:
        raise ValueError(f"{path} is not a PEM RSA private key: {exc}") from exc
    return key


def sign(message: bytes, domain: str, selector: str, key: bytes) -> bytes:
    """MESSAGE with a DKIM-Signature header on top, by DOMAIN's SELECTOR with KEY."""
    linesep = b"\r\n" if b"\r\n" in message[:1000] else b"\n"
    head = message.split(linesep + linesep, 1)[0].split(linesep)
    present = {line.split(b":", 1)[0].strip().lower() for line in head if line[:1] not in (b" ", b"\t")}
    headers = [name.encode() for name in SIGNED_HEADERS if name.lower().encode() in present]
    signature = dkim.sign(
        message, selector.encode(), domain.encode(), key, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=headers, linesep=linesep,
    )  # fmt: skip
    if linesep != b"\r\n":
        signature = signature.replace(b"\r\n", linesep)
    return bytes(signature) + message
