"""DKIM signing: what a real SMTP server received verifies with dkimpy, for every MIME shape."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from neoforge.errors import ConfigurationError
from neoforge.processes import wait_until
from tests.conftest import wait_for_status
from tests.smtp_server import SmtpServer
from tests.test_mime import SHAPES

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh RSA key in a PEM file, and the DNS TXT record that publishes its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "private.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _dns(record: bytes) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mail2026._domainkey.neoforge.example.com." else None

    return lookup


def test_every_shape_verifies(
    settings_env: Callable[..., None], smtp_server: SmtpServer, key_pair: tuple[Path, bytes]
) -> None:
    from tasks import send_email

    path, record = key_pair
    settings_env(
        DKIM_DOMAIN="neoforge.example.com", DKIM_SELECTOR="mail2026", DKIM_PRIVATE_KEY_FILE=str(path)
    )
    sent: dict[str, str] = {}
    for shape in SHAPES:
        body, attachments, _ = shape.values
        subject = f"DKIM {shape.id} — reçu"
        email = send_email.delay(
            to=["Zoë Ünïcode <zoe@example.com>"], cc=["plain@example.com"], subject=subject,
            attachments=attachments, headers={"X-Tag": "reçu", "List-Id": "News <news.example.com>"}, **body,
        )  # fmt: skip
        sent[subject] = email.id
    for email_id in sent.values():
        wait_for_status(email_id, {"sent"})
    wait_until(lambda: all(smtp_server.handler.by_subject(s) for s in sent), 10, "every shape received")
    for subject in sent:
        [received] = smtp_server.handler.by_subject(subject)
        raw = received.raw
        assert raw.startswith(b"DKIM-Signature: "), subject
        signature = received.message["DKIM-Signature"]
        assert "d=neoforge.example.com" in signature and "s=mail2026" in signature
        assert "c=relaxed/relaxed" in signature
        assert dkim.verify(raw, dnsfunc=_dns(record)), subject
        # Not vacuous: a changed subject or body no longer verifies.
        assert not dkim.verify(raw.replace(b"Subject: ", b"Subject: Re: ", 1), dnsfunc=_dns(record))
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert not dkim.verify(head + b"\r\n\r\nX" + rest, dnsfunc=_dns(record))


def test_unsigned_by_default(smtp_server: SmtpServer) -> None:
    from tasks import send_email

    email_id = send_email.delay(to=["zoe@example.com"], subject="Unsigned", text="x").id
    wait_for_status(email_id, {"sent"})
    wait_until(lambda: bool(smtp_server.handler.by_subject("Unsigned")), 10, "the message")
    assert b"DKIM-Signature" not in smtp_server.handler.by_subject("Unsigned")[0].raw


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        (b"not a key", {}, "DKIM_PRIVATE_KEY_FILE: {path} is not a PEM RSA private key"),
        (None, {}, "DKIM_PRIVATE_KEY_FILE: {path} cannot be read"),
        (b"", {"DKIM_SELECTOR": ""}, "DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE go together"),
    ],
)
def test_bad_dkim_settings_are_refused_at_start(
    settings_env: Callable[..., None], key_pair: tuple[Path, bytes], tmp_path: Path,
    content: bytes | None, env: dict[str, str], message: str,
) -> None:  # fmt: skip
    from neoforge.settings import get_settings

    path = tmp_path / "key.pem"
    if content:
        path.write_bytes(content)
    elif content is not None:
        path = key_pair[0]
    values: dict[str, Any] = {"DKIM_DOMAIN": "neoforge.example.com", "DKIM_SELECTOR": "s1",
                              "DKIM_PRIVATE_KEY_FILE": str(path), **env}  # fmt: skip
    settings_env(**values)
    with pytest.raises(ConfigurationError, match="invalid setting") as caught:
        get_settings()
    assert message.format(path=path) in str(caught.value)
