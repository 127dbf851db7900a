"""The SMTP providers to send through, from ``SMTP_URLS`` (``smtp://user:pass@host:587?rate=14/s,smtps://...``).

``smtp://`` uses STARTTLS (``?starttls=false`` for a local catcher), ``smtps://``
TLS from the first byte. Query options: ``rate`` (that provider's
SMTP_RATE_LIMIT), ``name`` (how the timeline, logs and metrics call it;
default ``host:port``). Credentials are percent-decoded and kept as secrets:
no message, name or log line carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr

from neoforge.rates import Rate, parse_rate

__all__ = ["Endpoint", "parse_urls"]

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Endpoint:
    """One SMTP provider: where it is, how to log in, and its own rate limit (None: SMTP_RATE_LIMIT)."""

    name: str
    host: str
    port: int
    user: str | None
    password: SecretStr | None
    starttls: bool
    ssl_tls: bool
    rate: Rate | None = None


def _one(number: int, url: str) -> Endpoint:
    where = f"SMTP_URLS item {number}"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{where} is not a URL such as smtp://user:password@host:587") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError(f"{where} must be smtp://host:port or smtps://host:port")
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(options) - {"rate", "name", "starttls"}
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(sorted(unknown))} (rate, name, starttls)")
    ssl_tls = parts.scheme == "smtps"
    starttls = not ssl_tls
    if "starttls" in options:
        flag = options["starttls"].lower()
        if flag not in _TRUE | _FALSE or (ssl_tls and flag in _TRUE):
            raise ValueError(f"{where}: starttls must be true or false (and false for smtps://)")
        starttls = flag in _TRUE
    port = port or (465 if ssl_tls else 587)
    name = options.get("name") or f"{parts.hostname}:{port}"
    if not name.replace(".", "").replace(":", "").replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{where}: name may hold letters, digits, '.', ':', '-' and '_' only")
    rate = parse_rate(options["rate"]) if "rate" in options else None
    user = unquote(parts.username) if parts.username else None
    password = SecretStr(unquote(parts.password)) if parts.password else None
    return Endpoint(name, parts.hostname, port, user, password, starttls, ssl_tls, rate)


def parse_urls(text: str) -> list[Endpoint]:
    """Every provider in TEXT (comma-separated URLs), in order; raise ValueError naming the bad one."""
    found = [_one(i, url) for i, url in enumerate((u for u in text.split(",") if u.strip()), start=1)]
    names = [endpoint.name for endpoint in found]
    if len(set(names)) != len(names):
        raise ValueError("SMTP_URLS names two providers alike: give one a ?name=")
    return found
