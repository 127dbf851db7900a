"""The one model that says what a valid email is: used by the task, EmailService and the API."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from neoforge.addresses import Mailbox, check_mailbox, parse_mailbox
from neoforge.settings import get_settings
from neoforge.templates import template_exists

__all__ = [
    "ALLOWED_HEADERS",
    "Attachment",
    "BulkRecipient",
    "BulkRequest",
    "DateTimeText",
    "EmailRequest",
    "Mailbox",
]

# Headers a caller may set. Everything that changes who gets the mail or how it
# is parsed (From, To, Cc, Bcc, Return-Path, Content-*, MIME-Version, ...) is
# ours to write; X- headers are free for tagging.
ALLOWED_HEADERS = frozenset(
    {
        "auto-submitted",
        "in-reply-to",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "precedence",
        "references",
    }
)
_X_HEADER = re.compile(r"^X-[A-Za-z0-9][A-Za-z0-9-]{0,76}$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MIME_TYPE = re.compile(r"^\s*([a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63})\s*", re.I)
# One "; name=value" of a Content-Type, the value a token or a quoted string.
_PARAMETER = re.compile(
    r';\s*([a-z0-9!#$&^_.+-]{1,64})=([a-z0-9!#$%&\'*+.^_`{|}~-]{1,200}|"(?:[^"\\]|\\.){0,200}")\s*', re.I
)
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$")
# The left part of a Content-ID (RFC 2392), optionally with "@domain"; the HTML
# refers to it as cid:VALUE.
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}(?:@[A-Za-z0-9.-]{1,200})?$")


# Every control character but tab: besides CR and LF, the email package also
# breaks header lines at VT, FF and the file/group/record separators, which
# would let a value start a header of its own.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain CR, LF, NUL or other control characters")
    return value


def _mailbox(value: str) -> str:
    # Stored as given (normalized): "address" or "Name <address>"; the
    # envelope takes the address alone (EmailRequest.recipients).
    _single_line(value)
    mailbox = check_mailbox(value, get_settings().email_allow_special_domains)
    if not mailbox.address.isascii():
        raise ValueError("non-ASCII addresses are not supported")
    return str(mailbox)


def _not_a_number(value: object) -> object:
    # An epoch number is not what the schema promises (an ISO 8601 string).
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 date-time with a time zone, not a number")
    return value


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    match = _MIME_TYPE.match(value)
    if not match:
        raise ValueError("must be a MIME type such as application/pdf")
    parameters: dict[str, str] = {}
    position = match.end()
    while position < len(value):
        parameter = _PARAMETER.match(value, position)
        if parameter is None:
            raise ValueError("parameters must be ; name=value, such as text/csv; charset=utf-8")
        name, raw = parameter.group(1).lower(), parameter.group(2)
        if name in parameters:
            raise ValueError(f"parameter {name} is given twice")
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if not raw.isascii():
            raise ValueError("parameter values must be ASCII")
        parameters[name] = raw.lower() if name == "charset" else raw
        position = parameter.end()
    if len(parameters) > 10:
        raise ValueError("at most 10 parameters")
    return match.group(1).lower(), parameters


def _quote(value: str) -> str:
    if _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


SingleLine = Annotated[str, AfterValidator(_single_line)]
DateTimeText = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]
# An address, or a display name and an address ("Zoë Ünïcode <zoe@example.com>").
Address = Annotated[str, AfterValidator(_mailbox)]


class Attachment(BaseModel):
    """A file sent with the email, carried as base64 (never a path on the server)."""

    model_config = ConfigDict(extra="forbid")

    filename: SingleLine = Field(
        min_length=1, max_length=255, description="File name shown to the recipient."
    )
    content: str = Field(description="The file's bytes, base64-encoded.")
    content_type: SingleLine = Field(
        "application/octet-stream",
        description="MIME type, with parameters if needed: application/pdf, text/csv; charset=iso-8859-1 "
        "(text/* without a charset is sent as utf-8).",
    )
    content_id: str | None = Field(
        None,
        description='Content-ID for an inline image: the HTML shows it as <img src="cid:VALUE">.',
    )

    @field_validator("filename")
    @classmethod
    def _no_path(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError("must be a file name, not a path")
        return value

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("must be valid base64") from exc
        return value

    @field_validator("content_type")
    @classmethod
    def _mime(cls, value: str) -> str:
        mime_type, parameters = _parse_content_type(value)
        if mime_type.startswith(("multipart/", "message/")):
            # Neither may be base64-encoded (RFC 2045 6.4, RFC 2046 5.2.1).
            raise ValueError(f"{mime_type} cannot be sent as an attachment; use application/octet-stream")
        for name, parameter in parameters.items():
            if name in {"boundary", "name", "filename"}:
                raise ValueError(f"parameter {name} is ours to write")
            if name == "charset":
                try:
                    codecs.lookup(parameter)
                except LookupError as exc:
                    raise ValueError(f"unknown charset {parameter!r}") from exc
        return "; ".join([mime_type, *(f"{name}={_quote(v)}" for name, v in parameters.items())])

    @field_validator("content_id")
    @classmethod
    def _content_id(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_ID.match(value):
            raise ValueError("must be a Content-ID such as logo or logo@example.com, without <>")
        return value

    @property
    def mime_type(self) -> str:
        """The type without parameters, e.g. text/csv."""
        return _parse_content_type(self.content_type)[0]

    @property
    def parameters(self) -> dict[str, str]:
        """The content type's parameters (names in lower case), e.g. {"charset": "iso-8859-1"}."""
        return _parse_content_type(self.content_type)[1]

    def data(self) -> bytes:
        """The decoded file content."""
        return base64.b64decode(self.content)

    @property
    def size(self) -> int:
        """Decoded size in bytes, computed without decoding."""
        padding = self.content.count("=", -2)
        return len(self.content) * 3 // 4 - padding


class EmailRequest(BaseModel):
    """An email to queue: recipients, subject, and a template or a text/HTML body."""

    model_config = ConfigDict(extra="forbid")

    to: list[Address] = Field(
        min_length=1, description='Recipients (To:), each "address" or "Display Name <address>".'
    )
    cc: list[Address] = Field(default_factory=list, description="Copy recipients (Cc:).")
    bcc: list[Address] = Field(
        default_factory=list,
        description="Blind-copy recipients: in the envelope only (no display name used).",
    )
    reply_to: list[Address] = Field(default_factory=list, description="Reply-To: addresses.")
    subject: SingleLine = Field(min_length=1, max_length=998, description="Subject line.")
    template: str | None = Field(
        None, description="Name of a template in templates/ (NAME.html and/or NAME.txt)."
    )
    context: dict[str, Any] = Field(
        default_factory=dict, description="Variables for the template; every one it uses is required."
    )
    text: str | None = Field(None, description="Plain-text body, instead of a template.")
    html: str | None = Field(None, description="HTML body, instead of a template.")
    headers: dict[str, SingleLine] = Field(
        default_factory=dict,
        description="Extra headers: X-* or one of " + ", ".join(sorted(ALLOWED_HEADERS)) + ".",
    )
    attachments: list[Attachment] = Field(
        default_factory=list, description="Files, base64-encoded; total size is limited."
    )
    priority: Literal["transactional", "bulk"] = Field(
        "transactional", description="transactional (resets, codes) is served ahead of bulk."
    )
    send_at: DateTimeText | None = Field(
        None,
        description="Send no earlier than this time (with a time zone; at most 30 days ahead).",
    )
    expires_at: DateTimeText | None = Field(
        None, description="Never send after this time: the email ends as expired instead."
    )
    idempotency_key: SingleLine | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The same key within the idempotency window returns the same id and queues nothing.",
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _TEMPLATE_NAME.match(value):
            raise ValueError("must be a template name (letters, digits, _ and -)")
        if not template_exists(value):
            raise ValueError(f"unknown template {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not (name.lower() in ALLOWED_HEADERS or _X_HEADER.match(name)):
                raise ValueError(f"header {name!r} is not allowed")
            if len(content) > 998:
                raise ValueError(f"header {name!r} is longer than 998 characters")
        return value

    @field_validator("text", "html")
    @classmethod
    def _body_size(cls, value: str | None) -> str | None:
        if value is not None:
            limit = get_settings().email_max_body_bytes
            if len(value.encode()) > limit:
                raise ValueError(f"is larger than {limit} bytes")
        return value

    @field_validator("attachments")
    @classmethod
    def _attachments_size(cls, value: list[Attachment]) -> list[Attachment]:
        limit = get_settings().email_max_attachments_bytes
        if sum(item.size for item in value) > limit:
            raise ValueError(f"total size is larger than {limit} bytes")
        content_ids = [item.content_id for item in value if item.content_id is not None]
        if len(content_ids) != len(set(content_ids)):
            raise ValueError("two attachments have the same content_id")
        return value

    @model_validator(mode="after")
    def _one_body(self, info: ValidationInfo) -> EmailRequest:
        if self.template is None and self.text is None and self.html is None:
            raise ValueError("give a template, or a text or html body")
        if self.template is not None and (self.text is not None or self.html is not None):
            raise ValueError("give a template or a text/html body, not both")
        if self.template is None and self.context:
            raise ValueError("context is only used with a template")
        settings = get_settings()
        limit = settings.email_max_recipients
        if len(self.to) + len(self.cc) + len(self.bcc) > limit:
            raise ValueError(f"more than {limit} recipients (to + cc + bcc)")
        if self.send_at is not None and self.expires_at is not None and self.expires_at <= self.send_at:
            raise ValueError("expires_at is not after send_at")
        if info.context and info.context.get("stored"):
            # Read back by a worker: checked against "now" when it was queued; since then its expiry
            # is Redis's clock's to judge (lua/begin.lua), not this host's, which may be off.
            return self
        now = datetime.now(UTC)
        if self.send_at is not None and self.send_at > now + timedelta(days=settings.email_max_schedule_days):
            raise ValueError(f"send_at is more than {settings.email_max_schedule_days} days ahead")
        if self.expires_at is not None and self.expires_at <= now:
            raise ValueError("expires_at is in the past")
        return self

    def recipients(self) -> list[str]:
        """Every envelope recipient: to, cc and bcc, each once, as bare addresses."""
        return list(dict.fromkeys(parse_mailbox(value).address for value in [*self.to, *self.cc, *self.bcc]))

    def mailboxes(self, field: Literal["to", "cc", "reply_to"]) -> list[Mailbox]:
        """The addresses of FIELD with their display names, for the message's headers."""
        values: list[str] = getattr(self, field)
        return [parse_mailbox(value) for value in values]


class BulkRecipient(BaseModel):
    """One recipient of a bulk send, with the template variables for them."""

    model_config = ConfigDict(extra="forbid")

    to: Address = Field(description="The recipient.")
    context: dict[str, Any] = Field(
        default_factory=dict, description="Template variables for this recipient."
    )


class BulkRequest(BaseModel):
    """One template to many recipients: each becomes an email of its own (status, retries, dead letter)."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="Name of a template in templates/.")
    subject: SingleLine = Field(min_length=1, max_length=998, description="Subject line, the same for all.")
    recipients: list[BulkRecipient] = Field(min_length=1, max_length=10_000, description="Up to 10,000.")
    context: dict[str, Any] = Field(
        default_factory=dict, description="Variables shared by every recipient (theirs take precedence)."
    )
    reply_to: list[Address] = Field(default_factory=list, description="Reply-To: addresses.")
    headers: dict[str, SingleLine] = Field(
        default_factory=dict, description="Extra headers, as for one email."
    )
    priority: Literal["transactional", "bulk"] = Field("bulk", description="bulk unless told otherwise.")
    send_at: DateTimeText | None = Field(None, description="Send no earlier than this time.")
    expires_at: DateTimeText | None = Field(None, description="Never send after this time.")

    def emails(self) -> list[dict[str, Any]]:
        """The fields of each recipient's email, for EmailRequest."""
        shared = self.model_dump(exclude={"recipients", "context"}, exclude_none=True)
        return [{**shared, "to": [r.to], "context": {**self.context, **r.context}} for r in self.recipients]
