"""A real SMTP server with STARTTLS and AUTH for the tests, signed by a test CA, counting its sessions.

The CA and the server certificate (for ``localhost`` only, no IP address)
are made with the ``cryptography`` package, so a connection to 127.0.0.1
fails the hostname check while one to localhost passes.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.smtp_server import RecordingHandler

USER = "mailer"
PASSWORD = "right-password-0123"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for localhost: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("NeoForge test CA"))
        .issuer_name(_name("NeoForge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, cert_file, key_file


class SlowHandler(RecordingHandler):
    """A RecordingHandler that can take its time over EHLO, so that sessions overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.ehlo_delay = 0.0

    def reset(self) -> None:
        super().reset()
        self.ehlo_delay = 0.0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        if self.ehlo_delay:
            await asyncio.sleep(self.ehlo_delay)
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


class Sessions:
    """The sessions open at the server now, and the most ever active at once.

    A session stops being active when the client says QUIT (the client waits
    for the reply before it opens another) and stops being open when the
    connection is gone.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[int] = set()
        self.active: set[int] = set()
        self.peak = 0
        self.total = 0

    def opened(self, session: int) -> None:
        with self.lock:
            if session not in self.open:
                self.total += 1
                self.active.add(session)
            self.open.add(session)
            self.peak = max(self.peak, len(self.active))

    def quitting(self, session: int) -> None:
        with self.lock:
            self.active.discard(session)

    def closed(self, session: int) -> None:
        with self.lock:
            self.open.discard(session)
            self.active.discard(session)

    def reset(self) -> None:
        with self.lock:
            self.open.clear()
            self.active.clear()
            self.peak = 0
            self.total = 0

    @property
    def now(self) -> int:
        with self.lock:
            return len(self.open)


class _CountingSMTP(SMTP):
    sessions: Sessions

    def connection_made(self, transport: Any) -> None:
        # Called again after STARTTLS for the same session: counted once (by protocol object).
        super().connection_made(transport)
        self.sessions.opened(id(self))

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.closed(id(self))
        super().connection_lost(error)

    async def smtp_QUIT(self, arg: str) -> None:
        self.sessions.quitting(id(self))
        await super().smtp_QUIT(arg)


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


class _Controller(Controller):
    def __init__(self, handler: Any, port: int, sessions: Sessions, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=port, **kwargs)
        self.sessions = sessions

    def factory(self) -> SMTP:
        server = _CountingSMTP(self.handler, **self.SMTP_kwargs)
        server.sessions = self.sessions
        return server


class TlsSmtpServer:
    """aiosmtpd on 127.0.0.1: STARTTLS required (test CA), AUTH required after it, sessions counted."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.ca_file, cert_file, key_file = make_certificates(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self.handler = SlowHandler()
        self.sessions = Sessions()
        self.controller = _Controller(
            self.handler,
            port,
            self.sessions,
            tls_context=context,
            require_starttls=True,
            authenticator=_authenticate,
            auth_required=True,
            auth_require_tls=True,
        )

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def reset(self) -> None:
        self.handler.reset()
        self.sessions.reset()


def smtp_settings(server: TlsSmtpServer, **overrides: str) -> dict[str, str]:
    """The SMTP_* settings that point at SERVER (as localhost, with its CA and login), with OVERRIDES."""
    values = {
        "SMTP_HOST": "localhost",
        "SMTP_PORT": str(server.port),
        "SMTP_STARTTLS": "true",
        "SMTP_CA_FILE": str(server.ca_file),
        "SMTP_USER": USER,
        "SMTP_PASSWORD": PASSWORD,
    }
    return {**values, **overrides}
