"""Email addresses as we accept them: email-validator's rules, display names, special-use domains.

Used by the email model (recipients) and by the settings (SMTP_FROM,
EMAIL_REDIRECT_TO), so both apply EMAIL_ALLOW_SPECIAL_DOMAINS the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import email_validator

__all__ = ["Mailbox", "check_domain_suffix", "check_mailbox", "parse_mailbox"]

# As pydantic's EmailStr, which this replaces.
_MAX_LENGTH = 2048
_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
# RFC 5322 specials, plus the spaces an unquoted display name would lose.
_NEEDS_QUOTES = re.compile(r'[()<>\[\]:;@\\,."]|^\s|\s$')
_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"$')
_UNQUOTED_SPECIALS = re.compile(r'[()<>\[\]:;@\\,"]')


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address and its display name ("" when there is none)."""

    name: str
    address: str

    def __str__(self) -> str:
        """The stored form: ``address``, or ``Name <address>`` (quoted when the name needs it)."""
        if not self.name:
            return self.address
        name = self.name
        if _NEEDS_QUOTES.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.address}>"


def check_domain_suffix(value: str) -> str:
    """VALUE as an entry of EMAIL_ALLOW_SPECIAL_DOMAINS (lower case); raise ValueError if no domain name."""
    suffix = value.strip().lower().lstrip("@.")
    if len(suffix) > 253 or not _HOSTNAME.match(suffix):
        raise ValueError(f"{value!r} is not a domain name such as local or corp.test")
    return suffix


def _allowed_suffix(domain: str, allowed: Sequence[str]) -> str | None:
    for suffix in allowed:
        tail = domain[-len(suffix) :]
        if (
            len(domain) >= len(suffix)
            and tail.isascii()
            and tail.lower() == suffix
            and (len(domain) == len(suffix) or domain[-len(suffix) - 1] == ".")
        ):
            return suffix
    return None


def check_mailbox(value: str, special_domains: Sequence[str] = (), *, display_name: bool = True) -> Mailbox:
    """VALUE (``address`` or ``Name <address>``) checked and normalized; raise ValueError if invalid.

    Addresses in SPECIAL_DOMAINS (suffixes from ``check_domain_suffix``) are
    accepted even when they are special-use names (.local, .test, .localhost,
    ...) or have no dot; every other rule still applies.
    """
    if len(value) > _MAX_LENGTH:
        raise ValueError(f"is not a valid email address: longer than {_MAX_LENGTH} characters")
    text, name = value.strip(), ""
    if text.endswith(">") and "<" in text:
        if not display_name:
            raise ValueError("must be a bare address, without a display name")
        start = text.rfind("<")
        name, text = _display_name(text[:start].strip()), text[start + 1 : -1]
    return Mailbox(name, _address(text, special_domains))


def _display_name(text: str) -> str:
    quoted = _QUOTED.match(text)
    if quoted:
        text = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _UNQUOTED_SPECIALS.search(text):
        # RFC 5322 lets a phrase hold UTF-8 (RFC 6532) and, obsoletely, dots,
        # but not these: "Smith, John <j@x.org>" would be two addresses.
        raise ValueError('is not a valid email address: quote a display name with specials ("Smith, John")')
    return unicodedata.normalize("NFC", text.strip())


def _address(text: str, special_domains: Sequence[str]) -> str:
    suffix = _allowed_suffix(text.rpartition("@")[2], special_domains)
    if suffix is not None:
        # email-validator refuses special-use names whatever its options. Check
        # the address with the suffix's labels replaced by as many "a"s (an
        # ordinary name, so lengths and every other rule still count), then
        # put the suffix back.
        placeholder = ".".join("a" * len(label) for label in suffix.split("."))
        text = text[: len(text) - len(suffix)] + placeholder
    try:
        result = email_validator.validate_email(
            text, check_deliverability=False, globally_deliverable=suffix is None
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from exc
    address = result.normalized
    return address if suffix is None else address[: -len(suffix)] + suffix


def parse_mailbox(value: str) -> Mailbox:
    """The parts of a mailbox in the stored form ``str(Mailbox)`` (one ``check_mailbox`` returned)."""
    if not value.endswith(">"):
        return Mailbox("", value)
    start = value.rfind("<")
    name = value[:start].rstrip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return Mailbox(name, value[start + 1 : -1])
