"""The MIME message for one email, built with the standard library's email package.

Shapes: text alone is one text/plain part, HTML alone one text/html part,
both a multipart/alternative (text first: the last part is the preferred
one); images the HTML shows by ``cid:`` sit with it in a multipart/related;
other attachments make a multipart/mixed around all of that. Multiparts carry
no charset and no Content-Transfer-Encoding (RFC 2045 6.4); text is 7bit when
it can be, else 8bit (server offered 8BITMIME) or quoted-printable; files are
base64.
"""

from __future__ import annotations

import email.policy
import unicodedata
import uuid
from datetime import UTC, datetime
from email import quoprimime
from email.header import Header
from email.headerregistry import (
    Address,
    BaseHeader,
    ContentDispositionHeader,
    HeaderRegistry,
    UnstructuredHeader,
)
from email.message import EmailMessage, MIMEPart
from email.policy import Policy
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import quote

from neoforge.message import Attachment, EmailRequest
from neoforge.settings import Settings
from neoforge.templates import Rendered

__all__ = ["build"]

# RFC 5322 2.1.1: at most 998 octets on a line, line break excluded.
_MAX_LINE = 998
# Characters RFC 2231/5987 leave unencoded in a parameter value.
_ATTR_CHARS = "!#$&+-.^_`|~"


class _Unstructured(UnstructuredHeader, BaseHeader):
    """Subject and other free-text headers; non-ASCII text folded by ``email.header.Header``.

    The policy's own folder (CPython 3.11) puts the space between two
    encoded words outside them, where RFC 2047 says to ignore it: a long
    non-ASCII subject would lose a space on the way.
    """

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if value.isascii():
            return super().fold(policy=policy)
        header = Header(value, "utf-8", maxlinelen=policy.max_line_length or None, header_name=self.name)
        return f"{self.name}: {header.encode(linesep=policy.linesep)}{policy.linesep}"


class _UniqueUnstructured(_Unstructured):
    max_count = 1


# typeshed's stubs for the two bases disagree; HeaderRegistry combines them so anyway.
class _ContentDisposition(ContentDispositionHeader, BaseHeader):  # type: ignore[misc]
    """Content-Disposition written as built, one parameter a line.

    The policy's folder merges ``filename`` and ``filename*`` into one
    parameter; we send both (an ASCII fallback for readers without RFC 2231).
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        super().parse(value, kwds)
        kwds["decoded"] = value  # as written, both filename parameters kept

    def fold(self, *, policy: Policy) -> str:
        separator = ";" + policy.linesep + " "
        return f"{self.name}: {separator.join(_split_parameters(str(self)))}{policy.linesep}"


def _split_parameters(value: str) -> list[str]:
    pieces, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = quoted
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            pieces.append(value[start:index].strip())
            start = index + 1
    pieces.append(value[start:].strip())
    return pieces


_REGISTRY = HeaderRegistry(default_class=_Unstructured)
_REGISTRY.map_to_type("subject", _UniqueUnstructured)
_REGISTRY.map_to_type("content-disposition", _ContentDisposition)


class _Verbatim(str):
    """A header we write ourselves in plain short ASCII: kept as is, never parsed or refolded.

    Parsing each header into the registry's objects and folding it back was
    most of the cost of a message (cProfile: 2.4 of 3.2 ms per email).
    """

    name: str
    defects: tuple[()] = ()

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


# Headers whose every value comes from this module (attachments' Content-Type
# too: set_param rewrites it as a string).
_VERBATIM = frozenset({"content-type", "content-transfer-encoding", "mime-version", "message-id", "date"})


class _Headers:
    """The policy's header factory: ``_Verbatim`` for our own plain headers, the registry for the rest."""

    def __getitem__(self, name: str) -> Any:
        return _REGISTRY[name]

    def __call__(self, name: str, value: Any) -> Any:
        if name.lower() in _VERBATIM and isinstance(value, str) and value.isascii() and len(value) < 900:
            header = _Verbatim(value)
            header.name = name
            return header
        return _REGISTRY(name, value)


# CRLF line ends (RFC 5322), lines folded at 78; headers stay ASCII (encoded
# words), as no SMTPUTF8 is asked for.
_POLICY = email.policy.SMTP.clone(header_factory=_Headers())


def build(
    email_id: str, request: EmailRequest, body: Rendered, settings: Settings, *, eight_bit: bool = False
) -> EmailMessage:
    """The message for REQUEST with BODY; EIGHT_BIT when the server offered 8BITMIME.

    The Message-ID is ``<EMAIL_ID@domain of SMTP_FROM>``: the same on every
    attempt, so a retried email is recognised as the same message.
    """
    if body.text is None and body.html is None:
        raise ValueError("the email has no body")
    message = EmailMessage(policy=_POLICY)
    _headers(message, email_id, request, settings)
    inline: list[Attachment] = []
    attached: list[Attachment] = []
    for item in request.attachments:
        shown = (
            body.html is not None and item.content_id is not None and f"cid:{item.content_id}" in body.html
        )
        (inline if shown else attached).append(item)
    target: MIMEPart = message
    if attached:
        first = MIMEPart(policy=_POLICY)
        _multipart(target, "mixed", [first, *(_attachment(item, inline=False) for item in attached)])
        target = first
    if body.text is not None and body.html is not None:
        text, html = MIMEPart(policy=_POLICY), MIMEPart(policy=_POLICY)
        _text(text, body.text, "plain", eight_bit)
        _multipart(target, "alternative", [text, html])
        target = html
    if body.html is None:
        _text(target, body.text or "", "plain", eight_bit)
        return message
    if inline:
        html = MIMEPart(policy=_POLICY)
        _multipart(target, "related", [html, *(_attachment(item, inline=True) for item in inline)])
        target = html
    _text(target, body.html, "html", eight_bit)
    return message


def _headers(message: EmailMessage, email_id: str, request: EmailRequest, settings: Settings) -> None:
    message["From"] = Address(display_name=settings.smtp_from_name, addr_spec=settings.smtp_from)
    # Bcc is never written: those recipients are in the envelope only.
    fields: tuple[tuple[str, Literal["to", "cc", "reply_to"]], ...] = (
        ("To", "to"),
        ("Cc", "cc"),
        ("Reply-To", "reply_to"),
    )
    for name, field in fields:
        mailboxes = request.mailboxes(field)
        if mailboxes:
            message[name] = [Address(display_name=m.name, addr_spec=m.address) for m in mailboxes]
    message["Subject"] = request.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{email_id}@{_ascii_domain(settings.smtp_from)}>"
    for name, value in request.headers.items():
        # X-* as the caller spelled it; the others in their usual spelling.
        canonical = name if name[:2].lower() == "x-" else "-".join(w.capitalize() for w in name.split("-"))
        message[canonical] = value
    message["MIME-Version"] = "1.0"


def _ascii_domain(address: str) -> str:
    domain = address.rpartition("@")[2]
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


def _multipart(target: MIMEPart, subtype: str, parts: list[MIMEPart]) -> None:
    # Our own boundary, set with the type in one header: without one, the
    # generator draws a random one and compiles a regular expression to check
    # it against the content (a third of the MIME cost per email, py-spy on
    # bench/). 128 random bits cannot turn up in the content by chance.
    target["Content-Type"] = f'multipart/{subtype}; boundary="=_{uuid.uuid4().hex}"'
    for part in parts:
        target.attach(part)


def _text(target: MIMEPart, text: str, subtype: str, eight_bit: bool) -> None:
    # What set_content does for text, without its three parse-and-replace
    # rounds of the Content-Type header (about a third of the build cost).
    lines = text.encode("utf-8").splitlines()
    data = b"\n".join(lines) + b"\n"
    short = max(map(len, lines), default=0) <= _MAX_LINE
    if short and data.isascii():
        cte, payload = "7bit", data.decode("ascii")
    elif short and eight_bit:
        cte, payload = "8bit", data.decode("ascii", "surrogateescape")
    else:
        cte, payload = "quoted-printable", quoprimime.body_encode(data.decode("latin-1"), 76)
    target["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    target["Content-Transfer-Encoding"] = cte
    target.set_payload(payload)


def _attachment(item: Attachment, *, inline: bool) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    maintype, _, subtype = item.mime_type.partition("/")
    parameters = item.parameters
    if maintype == "text":
        parameters.setdefault("charset", "utf-8")
    # base64 for text files too: their bytes (line ends included) arrive as sent.
    fallback, extended = _filename_parameters(item.filename)
    # The ASCII name rides in Content-Type's ``name`` (what readers without RFC
    # 2231 show); Content-Disposition carries one filename parameter only (a
    # second one is a duplicate parameter to Python's parser and others).
    parameters.setdefault("name", fallback)
    part.set_content(item.data(), maintype, subtype, cte="base64", params=parameters)
    part["Content-Disposition"] = "; ".join(["inline" if inline else "attachment", *extended])
    if item.content_id is not None:
        part["Content-ID"] = f"<{item.content_id}>"
    return part


def _filename_parameters(filename: str) -> tuple[str, list[str]]:
    """An ASCII fallback name, and the Content-Disposition filename: plain, or RFC 2231 if not ASCII."""
    fallback = unicodedata.normalize("NFKD", filename)
    fallback = "".join(c for c in fallback if not unicodedata.combining(c))
    fallback = "".join(c if c.isascii() else "_" for c in fallback)
    if filename.isascii():
        return fallback, ['filename="' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"']
    # Continuations (filename*0*, filename*1*, ...) keep lines short; a
    # character's octets are never split between two of them.
    chunks, chunk = [], "utf-8''"
    for char in filename:
        encoded = quote(char, safe=_ATTR_CHARS)
        if len(chunk) + len(encoded) > 60:
            chunks.append(chunk)
            chunk = ""
        chunk += encoded
    chunks.append(chunk)
    if len(chunks) == 1:
        return fallback, [f"filename*={chunks[0]}"]
    return fallback, [f"filename*{index}*={value}" for index, value in enumerate(chunks)]
