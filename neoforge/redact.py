"""Keep addresses and secrets out of logs and error texts."""

from __future__ import annotations

import re

__all__ = ["mask_address", "mask_addresses"]

_ADDRESS = re.compile(r"([A-Za-z0-9._%+\-=!#$&'*/?^`{|}~]+)@([A-Za-z0-9.\-\[\]:]+)")


def mask_address(address: str) -> str:
    """bob@example.com -> b***@example.com: enough to tell domains apart, not people."""
    local, _, domain = address.rpartition("@")
    if not local:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_addresses(text: str) -> str:
    """Mask every address inside free text, such as an SMTP server's reply."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)[0]}***@{m.group(2)}", text)
