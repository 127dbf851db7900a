"""The MIME message (neoforge/mime.py), checked with the email package's own parser; display names and
special-use domains (neoforge/message.py, neoforge/settings.py)."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import re
from collections.abc import Callable
from email.message import EmailMessage, Message
from typing import Any

import pytest
from pydantic import ValidationError

from neoforge.errors import ConfigurationError
from neoforge.message import Attachment, EmailRequest, Mailbox
from neoforge.mime import build
from neoforge.settings import Settings, get_settings
from neoforge.templates import Rendered


def _settings() -> Settings:
    return Settings(
        smtp_from="noreply@corp.local", smtp_from_name="Nëo Forge", email_allow_special_domains=["local"]
    )


TEXT = "Bonjour Zoë,\nvotre reçu est joint.\n-- \nL'équipe\n"
HTML = '<p>Bonjour <b>Zoë</b>, <img src="cid:logo@corp.local" alt="logo"></p>\n'
CSV = "nom,prix\r\nCafé,3€\r\n".encode()
PDF = bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
# Long enough to be folded over several lines, non-ASCII throughout.
SUBJECT = "Votre reçu n° 42 — merci, à bientôt " * 4 + "fin"
# Multiparts may carry no transfer encoding nor charset; the names here are
# the only header spellings our messages use (fastapi-mail wrote "content-type").
_HEADER_NAMES = {
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", "Content-ID", "List-Unsubscribe", "X-Tag",
}  # fmt: skip


def _attachment(filename: str, data: bytes, content_type: str, **extra: str) -> dict[str, Any]:
    return {
        "filename": filename,
        "content": base64.b64encode(data).decode(),
        "content_type": content_type,
        **extra,
    }


def _request(**fields: Any) -> EmailRequest:
    return EmailRequest.model_validate(
        {
            "to": ["Zoë Ünïcode <zoe@example.com>", "plain@example.com"],
            "cc": ['"Smith, John" <john@example.com>'],
            "bcc": ["Hidden Person <hidden@example.com>"],
            "reply_to": ["Support <support@example.com>"],
            "subject": SUBJECT,
            "text": "x",
            "headers": {"list-unsubscribe": "<mailto:unsubscribe@example.com>", "X-Tag": "reçu"},
            **fields,
        }
    )


def _parse(message: EmailMessage) -> tuple[bytes, EmailMessage]:
    raw = message.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def _tree(part: Message) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [_tree(child) for child in part.get_payload()])  # type: ignore[union-attr]
    return part.get_content_type()


def _check_well_formed(raw: bytes, parsed: EmailMessage, *, eight_bit: bool = False) -> None:
    """No defect the parser can find; no transfer encoding or charset on a multipart; lines ≤ 998 octets."""
    for part in parsed.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
        for name, value in part.items():
            assert name in _HEADER_NAMES, name
            defects = [str(defect) for defect in value.defects]
            assert defects == [], (name, value, defects)
        if part.is_multipart():
            assert "Content-Transfer-Encoding" not in part, part.items()
            assert part.get_param("charset") is None, part.items()
            assert part.get_boundary() is not None
            assert re.fullmatch(r"=_[0-9a-f]{32}", part.get_boundary() or "")
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines), max(map(len, lines))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    if not eight_bit:
        assert raw.isascii()


def _body_parts(parsed: EmailMessage) -> dict[str, EmailMessage]:
    return {part.get_content_type(): part for part in parsed.walk() if not part.is_multipart()}


def _text_of(part: EmailMessage) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _filenames(raw: bytes) -> list[tuple[str, str]]:
    """Each attachment's (ASCII fallback in Content-Type ``name``, file name read the RFC 2231 way)."""
    names = []
    for part in email.message_from_bytes(raw).walk():
        filename = part.get_filename()
        if filename is not None:
            names.append((email.utils.collapse_rfc2231_value(part.get_param("name") or ""), filename))
    return names


SHAPES = [
    pytest.param({"text": TEXT}, [], "text/plain", id="text"),
    pytest.param({"html": HTML}, [], "text/html", id="html"),
    pytest.param(
        {"text": TEXT, "html": HTML}, [], ("multipart/alternative", ["text/plain", "text/html"]), id="both"
    ),
    pytest.param(
        {"text": TEXT},
        [_attachment("reçu.pdf", PDF, "application/pdf")],
        ("multipart/mixed", ["text/plain", "application/pdf"]),
        id="text+attachment",
    ),
    pytest.param(
        {"text": TEXT, "html": HTML},
        [
            _attachment("logo.png", PNG, "image/png", content_id="logo@corp.local"),
            _attachment("prix.csv", CSV, "text/csv"),
        ],
        (
            "multipart/mixed",
            [
                ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
                "text/csv",
            ],
        ),
        id="both+inline+attachment",
    ),
    pytest.param(
        {"html": HTML},
        [_attachment("logo.png", PNG, "image/png", content_id="logo@corp.local")],
        ("multipart/related", ["text/html", "image/png"]),
        id="html+inline",
    ),
    pytest.param(
        {"text": TEXT},
        [_attachment("logo.png", PNG, "image/png", content_id="logo@corp.local")],
        ("multipart/mixed", ["text/plain", "image/png"]),
        id="cid-not-shown-is-an-attachment",
    ),
]


@pytest.mark.parametrize(("body", "attachments", "tree"), SHAPES)
def test_every_shape_is_well_formed_mime(body: dict[str, str], attachments: list[Any], tree: Any) -> None:
    request = _request(attachments=attachments)
    message = build("id-1", request, Rendered(html=body.get("html"), text=body.get("text")), _settings())
    raw, parsed = _parse(message)
    _check_well_formed(raw, parsed)
    assert _tree(parsed) == tree
    parts = _body_parts(parsed)
    for subtype, text in (("text/plain", body.get("text")), ("text/html", body.get("html"))):
        if text is not None:
            part = parts[subtype]
            assert part.get_param("charset") == "utf-8"
            assert part["Content-Transfer-Encoding"] == "quoted-printable"  # not ASCII, no 8BITMIME
            assert _text_of(part) == text
            assert part.get_content_disposition() is None
    for item in attachments:
        part = parts[item["content_type"]]
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_payload(decode=True) == base64.b64decode(item["content"])
        shown = "content_id" in item and body.get("html") is not None
        assert part.get_content_disposition() == ("inline" if shown else "attachment")
        if "content_id" in item:
            assert part["Content-ID"] == f"<{item['content_id']}>"


def test_headers() -> None:
    request = _request()
    raw, parsed = _parse(build("0b7e-42", request, Rendered(html=None, text="x\n"), _settings()))
    _check_well_formed(raw, parsed)
    assert str(parsed["Subject"]) == SUBJECT
    assert [(a.display_name, a.addr_spec) for a in parsed["From"].addresses] == [
        ("Nëo Forge", "noreply@corp.local")
    ]
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("Zoë Ünïcode", "zoe@example.com"),
        ("", "plain@example.com"),
    ]
    assert [(a.display_name, a.addr_spec) for a in parsed["Cc"].addresses] == [
        ("Smith, John", "john@example.com")
    ]
    assert [(a.display_name, a.addr_spec) for a in parsed["Reply-To"].addresses] == [
        ("Support", "support@example.com")
    ]
    assert "Bcc" not in parsed
    assert b"hidden" not in raw.lower()
    assert parsed["Message-ID"] == "<0b7e-42@corp.local>"
    assert parsed["Date"].datetime is not None
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"
    assert parsed["X-Tag"] == "reçu"
    assert b"\r\nList-Unsubscribe: " in raw
    # Encoded words, never raw UTF-8, in the head (no SMTPUTF8 is asked for).
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.isascii()
    assert b"=?utf-8?" in head


def test_message_id_is_the_same_on_every_attempt() -> None:
    request = _request()
    first = build("same-id", request, Rendered(html=None, text="x"), _settings())
    second = build("same-id", request, Rendered(html=None, text="x"), _settings())
    assert first["Message-ID"] == second["Message-ID"] == "<same-id@corp.local>"


@pytest.mark.parametrize(
    ("text", "eight_bit", "encoding"),
    [
        pytest.param("plain ASCII\n", False, "7bit", id="ascii"),
        pytest.param("é\n", False, "quoted-printable", id="utf8"),
        pytest.param("é\n", True, "8bit", id="utf8-8bitmime"),
        pytest.param("x" * 1200 + "\n", False, "quoted-printable", id="long-ascii-line"),
        pytest.param("é" + "x" * 1200 + "\n.\nfin\n", True, "quoted-printable", id="long-line-8bitmime"),
    ],
)
def test_text_encoding(text: str, eight_bit: bool, encoding: str) -> None:
    message = build("id", _request(), Rendered(html=text, text=text), _settings(), eight_bit=eight_bit)
    raw, parsed = _parse(message)
    _check_well_formed(raw, parsed, eight_bit=eight_bit)
    for part in _body_parts(parsed).values():
        assert part["Content-Transfer-Encoding"] == encoding
        assert part.get_param("charset") == "utf-8"
        assert _text_of(part) == text


def test_attachment_file_names_and_charsets() -> None:
    long_name = "Relevé de compte détaillé pour l'année fiscale 2025 — version définitive.pdf"
    attachments = [
        _attachment("prix.csv", CSV, "text/csv"),
        _attachment("ancien.csv", "Café\n".encode("iso-8859-1"), "text/csv; charset=ISO-8859-1"),
        _attachment("Zoë Ünïcode.pdf", PDF, "application/pdf"),
        _attachment(long_name, PDF, "application/x-pdf"),
        _attachment('plain "quoted".bin', PDF, "application/octet-stream"),
    ]
    message = build("id", _request(attachments=attachments), Rendered(html=None, text="x"), _settings())
    raw, parsed = _parse(message)
    _check_well_formed(raw, parsed)
    parts = [part for part in parsed.iter_attachments() if isinstance(part, EmailMessage)]
    assert _filenames(raw) == [
        ("prix.csv", "prix.csv"),
        ("ancien.csv", "ancien.csv"),
        ("Zoe Unicode.pdf", "Zoë Ünïcode.pdf"),
        ("Releve de compte detaille pour l'annee fiscale 2025 _ version definitive.pdf", long_name),
        ('plain "quoted".bin', 'plain "quoted".bin'),
    ]
    assert b"filename*=utf-8''Zo%C3%AB%20%C3%9Cn%C3%AFcode.pdf" in raw
    assert [part.get_param("charset") for part in parts] == ["utf-8", "iso-8859-1", None, None, None]
    assert parts[0].get_content() == CSV.decode()
    assert parts[1].get_content() == "Café\n"
    assert [part.get_payload(decode=True) for part in parts] == [
        base64.b64decode(item["content"]) for item in attachments
    ]


def test_attachment_content_type_parameters_are_checked() -> None:
    def content_type(value: str) -> str:
        return Attachment.model_validate(_attachment("a.csv", b"x", value)).content_type

    assert (
        content_type("Text/CSV; Charset=UTF-8; header=present") == "text/csv; charset=utf-8; header=present"
    )
    assert content_type('text/plain; format="flowed"') == "text/plain; format=flowed"
    for bad in (
        "text/csv; charset=no-such-charset",
        "text/csv; charset",
        "text/csv; charset=utf-8; charset=latin-1",
        "text/csv; boundary=x",
        "multipart/mixed",
        "message/rfc822",
        'text/csv; x="a\r\nBcc: e@example.com"',
        "text/csv;",
    ):
        with pytest.raises(ValidationError):
            content_type(bad)


def test_display_names_are_kept_and_the_envelope_has_bare_addresses() -> None:
    request = _request(
        to=["Zoë Ünïcode <zoe@example.com>", "  Jo.Jr <jo@example.com> "], cc=["zoe@example.com"]
    )
    assert request.to == ["Zoë Ünïcode <zoe@example.com>", '"Jo.Jr" <jo@example.com>']
    assert request.mailboxes("to") == [
        Mailbox("Zoë Ünïcode", "zoe@example.com"),
        Mailbox("Jo.Jr", "jo@example.com"),
    ]
    assert request.mailboxes("cc") == [Mailbox("", "zoe@example.com")]
    assert request.recipients() == ["zoe@example.com", "jo@example.com", "hidden@example.com"]
    # What the worker reads back from the store is the same request.
    assert EmailRequest.model_validate_json(request.model_dump_json()) == request


@pytest.mark.parametrize(
    "address",
    [
        "Smith, John <john@example.com>",  # unquoted comma: two addresses?
        "Zoë\r\nBcc: x@example.com <zoe@example.com>",
        "Zoë <zoë@example.com>",  # non-ASCII address: no SMTPUTF8
        "Zoë <zoe@example>",
        "Zoë <>",
        "Zoë <zoe@localhost>",
    ],
)
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValidationError):
        _request(to=[address])


SPECIAL = ["it@corp.local", "Zoë <zoe@mail.corp.local>", "qa@staging.test", "root@localhost"]


@pytest.mark.parametrize("address", SPECIAL)
def test_special_use_domains_are_refused_by_default(address: str) -> None:
    with pytest.raises(ValidationError, match=r"special-use|period"):
        _request(to=[address])


def test_special_use_domains_are_accepted_when_allowed(settings_env: Callable[..., None]) -> None:
    settings_env(EMAIL_ALLOW_SPECIAL_DOMAINS="local, .test,localhost")
    request = _request(to=SPECIAL, cc=["It <IT@Corp.LOCAL>"])
    assert request.recipients()[:4] == [
        "it@corp.local",
        "zoe@mail.corp.local",
        "qa@staging.test",
        "root@localhost",
    ]
    assert request.mailboxes("cc") == [Mailbox("It", "IT@corp.local")]
    # Only the listed suffixes; other special-use names stay refused.
    for address in ("a@b.invalid", "a@b.onion", "a@notlocal", "a@local.example.org.arpa"):
        with pytest.raises(ValidationError):
            _request(to=[address])


def test_smtp_from_in_a_local_domain(settings_env: Callable[..., None]) -> None:
    settings_env(SMTP_FROM="noreply@corp.local")
    with pytest.raises(ConfigurationError, match="SMTP_FROM"):
        get_settings()
    settings_env(EMAIL_ALLOW_SPECIAL_DOMAINS="local")
    assert get_settings().smtp_from == "noreply@corp.local"
    settings_env(EMAIL_REDIRECT_TO="qa@corp.local")
    assert get_settings().email_redirect_to == "qa@corp.local"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMTP_FROM", "NeoForge <noreply@example.com>"),  # the name goes in SMTP_FROM_NAME
        ("SMTP_FROM", "noreply@example"),
        ("EMAIL_ALLOW_SPECIAL_DOMAINS", "local,not a domain"),
    ],
)
def test_bad_sender_settings_are_refused(settings_env: Callable[..., None], name: str, value: str) -> None:
    settings_env(**{name: value})
    with pytest.raises(ConfigurationError, match=name):
        get_settings()
