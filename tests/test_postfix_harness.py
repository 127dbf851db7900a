"""The Postfix harness itself, driven by plain aiosmtplib as any client would."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

import tests.postfix as postfix_module
from neoforge.processes import wait_until
from tests.postfix import Postfix, postfix_server  # noqa: F401 - a fixture

SENDER = "sender@corp.local"


def _address(domain: str = "example.com") -> str:
    return f"to-{uuid.uuid4().hex[:10]}@{domain}"


def _message(to: str, body: str = "Hello from the harness.\n", subject: str = "harness") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def _client(server: Postfix, **options: object) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, timeout=10, **options)


def _tls(server: Postfix) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


@pytest.fixture
def postfix(postfix_server: Postfix) -> Iterator[Postfix]:  # noqa: F811 - the imported fixture
    yield postfix_server
    postfix_server.clear_access()


def test_starttls_is_verified_against_the_test_ca(postfix: Postfix) -> None:
    async def run() -> None:
        async with _client(postfix) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("starttls")
            assert not smtp.supports_extension("auth"), "AUTH offered before STARTTLS"
            await smtp.starttls(tls_context=_tls(postfix))
            await smtp.ehlo()
            assert smtp.supports_extension("auth")
            cert = smtp.get_transport_info("peercert")
            assert ("DNS", "localhost") in cert["subjectAltName"]
        # The same CA, another name: the hostname check must refuse it.
        async with _client(postfix) as smtp:
            with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                await smtp.starttls(tls_context=_tls(postfix), server_hostname="mail.elsewhere.test")
        # The system's CAs: the test CA is not among them.
        async with _client(postfix) as smtp:
            with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
                await smtp.starttls(tls_context=ssl.create_default_context())

    asyncio.run(run())


@pytest.mark.parametrize("mechanism", ["auth_plain", "auth_login"])
def test_login_succeeds_with_the_password_and_fails_with_another(postfix: Postfix, mechanism: str) -> None:
    async def run() -> None:
        async with _client(postfix) as smtp:
            await smtp.starttls(tls_context=_tls(postfix))
            response = await getattr(smtp, mechanism)(postfix.user, postfix.password)
            assert response.code == 235
        async with _client(postfix) as smtp:
            await smtp.starttls(tls_context=_tls(postfix))
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
                await getattr(smtp, mechanism)(postfix.user, postfix.password + "x")
            assert refused.value.code == 535

    asyncio.run(run())


def test_a_message_lands_in_its_maildir_and_parses(postfix: Postfix) -> None:
    to, other = _address(), _address("corp.local")
    message = _message(to, body="Grüße aus dem Test.\n", subject="Maildir check")
    message["Cc"] = other

    async def run() -> None:
        async with _client(postfix) as smtp:
            await smtp.starttls(tls_context=_tls(postfix))
            await smtp.login(postfix.user, postfix.password)
            errors, _ = await smtp.send_message(message)
            assert errors == {}

    asyncio.run(run())
    [delivered] = postfix.wait_delivered(to, 1)
    assert delivered["Subject"] == "Maildir check"
    assert delivered["Delivered-To"] == to
    assert delivered.get_content() == "Grüße aus dem Test.\n"
    received = delivered["Received"]
    assert "using TLS" in received
    assert f"Authenticated sender: {postfix.user}" in received
    assert postfix.wait_delivered(other, 1)[0]["Message-ID"] == delivered["Message-ID"]
    assert b"Maildir check" in postfix.raw_delivered(to)[0]
    assert postfix.delivered(_address()) == []


def test_access_map_answers_450_and_550_without_a_restart(postfix: Postfix) -> None:
    greylisted, unknown, fine = _address(), _address(), _address()

    async def rcpt(address: str) -> tuple[int, str]:
        async with _client(postfix) as smtp:
            await smtp.mail(SENDER)
            try:
                response = await smtp.rcpt(address)
            except aiosmtplib.SMTPRecipientRefused as exc:
                return exc.code, exc.message
            return response.code, response.message

    postfix.set_access(greylisted, "450 4.2.0 greylisted")
    postfix.set_access(unknown, "550 5.1.1 no such user")
    # Postfix keeps code and status, and puts the address before the text.
    rejected = "Recipient address rejected"
    assert asyncio.run(rcpt(greylisted)) == (450, f"4.2.0 <{greylisted}>: {rejected}: greylisted")
    assert asyncio.run(rcpt(unknown)) == (550, f"5.1.1 <{unknown}>: {rejected}: no such user")
    assert asyncio.run(rcpt(fine))[0] == 250
    # Changed within the same second, read by the very next connection.
    postfix.set_access(greylisted, "550 5.1.1 gone now")
    assert asyncio.run(rcpt(greylisted))[0] == 550
    postfix.clear_access()
    assert asyncio.run(rcpt(greylisted))[0] == 250
    assert asyncio.run(rcpt(unknown))[0] == 250


def test_a_message_over_the_size_limit_is_refused(postfix: Postfix) -> None:
    to = _address()
    body = ("x" * 76 + "\n") * (postfix.message_size_limit // 77 + 10)
    big = _message(to, body=body)
    size = len(big.as_bytes())
    assert size > postfix.message_size_limit

    async def run() -> None:
        async with _client(postfix) as smtp:
            await smtp.ehlo()
            assert int(smtp.esmtp_extensions["size"]) == postfix.message_size_limit
            # Declared up front: refused at MAIL FROM.
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as at_mail:
                await smtp.mail(SENDER, options=[f"SIZE={size}"])
            assert at_mail.value.code == 552
            # Not declared: refused after DATA.
            await smtp.rset()
            await smtp.mail(SENDER)
            await smtp.rcpt(to)
            with pytest.raises(aiosmtplib.SMTPDataError) as at_data:
                await smtp.data(big.as_bytes())
            assert at_data.value.code == 552

    asyncio.run(run())
    assert postfix.raw_delivered(to) == []


def test_open_sessions_sees_a_connection_and_sees_it_go(postfix: Postfix) -> None:
    before = postfix.open_sessions()

    async def run() -> None:
        polite, rude = _client(postfix), _client(postfix)
        await polite.connect()
        await rude.connect()
        await asyncio.to_thread(wait_until, lambda: postfix.open_sessions() == before + 2, 10, "2 sessions")
        await polite.quit()
        await asyncio.to_thread(wait_until, lambda: postfix.open_sessions() == before + 1, 10, "1 session")
        rude.close()  # no QUIT: the server notices the closed socket
        await asyncio.sleep(0)

    asyncio.run(run())
    wait_until(lambda: postfix.open_sessions() == before, 10, "no session")


def test_required_auth_and_tls_and_restart() -> None:
    folder = Path(tempfile.mkdtemp(prefix="neoforge-postfix-"))
    server = Postfix(folder, auth_required=True, tls_required=True)
    to = _address("corp.local")

    async def send(login: bool) -> None:
        async with _client(server) as smtp:
            await smtp.starttls(tls_context=_tls(server))
            if login:
                await smtp.login(server.user, server.password)
            await smtp.send_message(_message(to))

    async def without_tls() -> None:
        async with _client(server) as smtp:
            await smtp.mail(SENDER)

    try:
        server.start()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as no_tls:
            asyncio.run(without_tls())
        assert no_tls.value.code == 530
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as no_auth:
            asyncio.run(send(login=False))
        [refused] = no_auth.value.recipients
        assert refused.code == 530
        assert refused.message.endswith("Client host rejected: Authentication required")
        asyncio.run(send(login=True))
        server.wait_delivered(to, 1)
        master, port = server._master, server.port
        server.restart()
        assert server.port == port
        assert server._master != master
        assert master is not None and not os.path.exists(f"/proc/{master}")
        asyncio.run(send(login=True))
        assert len(server.wait_delivered(to, 2)) == 2
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    with pytest.raises(aiosmtplib.SMTPConnectError):
        asyncio.run(send(login=True))


def test_a_missing_postfix_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postfix_module, "POSTFIX", str(tmp_path / "no-postfix"))
    with pytest.raises(RuntimeError, match=r"system-deps\.sh"):
        Postfix(tmp_path).start()
