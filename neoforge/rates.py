"""Sending rates as settings write them: ``14/s``, ``20/m``, ``1000/h``, ``20/5s``; domain lists.

Pure parsing, no I/O: settings validate with it, the pacer (neoforge/pacing.py) uses the result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Rate", "parse_domain_limits", "parse_rate"]

_RATE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*(?:\.\d+)?)\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I
)
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """A token bucket's shape: ``per_second`` tokens come back each second, at most ``burst`` kept."""

    per_second: float
    burst: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> Rate:
    """``N/s``, ``N/m``, ``N/h`` or ``N/Ks`` (N messages per K seconds) as a Rate; raise ValueError.

    The burst is one second's worth (at least one message): the limit holds
    over any window, not only on average.
    """
    found = _RATE.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a rate such as 14/s, 20/m, 1000/h or 20/5s")
    count, span, unit = float(found[1]), float(found[2] or 1), _UNIT[found[3][0].lower()]
    if count <= 0 or span <= 0:
        raise ValueError(f"{text!r} is not a rate: the count and the period must be positive")
    per_second = count / (span * unit)
    return Rate(per_second, float(max(1, math.floor(per_second))), text.strip())


def parse_domain_limits(text: str) -> dict[str, Rate]:
    """``gmail.com=20/s,yahoo.com=5/s`` as {domain: Rate}; raise ValueError naming the bad item."""
    limits: dict[str, Rate] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        domain, sep, rate = item.partition("=")
        domain = domain.strip().lower().lstrip("@")
        if not sep or not domain or "." not in domain or any(c.isspace() for c in domain):
            raise ValueError(f"{item!r} is not DOMAIN=RATE (for example gmail.com=20/s)")
        limits[domain] = parse_rate(rate)
    return limits
