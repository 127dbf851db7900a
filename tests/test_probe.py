"""`neoforge check`, GET /health/ready and the worker's start-up line, against real SMTP servers.

The TLS server requires STARTTLS and AUTH and presents a certificate for
localhost from a test CA: the same server answers ok, login refused,
certificate or hostname refused, depending only on our settings.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from neoforge.processes import free_port, wait_until
from tests.smtp_server import SmtpServer
from tests.tls_smtp import PASSWORD, USER, TlsSmtpServer, smtp_settings

WRONG = "wrong-password-9876"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSmtpServer]:
    server = TlsSmtpServer(free_port(), tmp_path_factory.mktemp("tls-smtp"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def use_tls_server(tls_server: TlsSmtpServer, settings_env: Callable[..., None]) -> Callable[..., None]:
    """Point the settings at the TLS server (as localhost, with its CA), overriding any of them."""
    tls_server.reset()

    def point(**overrides: str) -> None:
        settings_env(**smtp_settings(tls_server, **overrides))

    return point


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener.getsockname()[1]
    listener.close()


def run_check() -> tuple[int, str]:
    from neoforge.cli import main

    result = CliRunner().invoke(main, ["check"])
    return result.exit_code, result.output


def test_check_ok_verifies_against_the_ca_file(tls_server: TlsSmtpServer, use_tls_server: Any) -> None:
    use_tls_server()
    code, out = run_check()
    assert out == (
        f"smtp: ok (localhost:{tls_server.port}, STARTTLS, verified against SMTP_CA_FILE, AUTH as {USER})\n"
    )
    assert code == 0
    # It said QUIT: no session stays open at the server.
    wait_until(lambda: tls_server.sessions.now == 0, 5, "the check's session to end")
    assert tls_server.sessions.total == 1


def test_check_wrong_password(tls_server: TlsSmtpServer, use_tls_server: Any) -> None:
    use_tls_server(SMTP_PASSWORD=WRONG)
    code, out = run_check()
    assert out.startswith("smtp: login refused (auth): 535 5.7.8 "), out
    assert out.count("\n") == 1
    assert WRONG not in out and PASSWORD not in out
    assert code == 1
    wait_until(lambda: tls_server.sessions.now == 0, 5, "the refused session to end")


def test_check_keeps_the_hostname_check_with_a_ca_file(use_tls_server: Any) -> None:
    # The certificate names localhost only: by IP address, the CA alone does not make it valid.
    use_tls_server(SMTP_HOST="127.0.0.1")
    code, out = run_check()
    assert out.startswith("smtp: TLS failed (tls): SSLCertVerificationError: "), out
    assert "IP address mismatch" in out
    assert code == 1


def test_check_without_the_ca_file_refuses_the_certificate(use_tls_server: Any) -> None:
    use_tls_server(SMTP_CA_FILE="")
    code, out = run_check()
    assert out.startswith("smtp: TLS failed (tls): "), out
    assert "certificate verify failed" in out
    assert code == 1


def test_check_without_verification(use_tls_server: Any) -> None:
    use_tls_server(SMTP_CA_FILE="", SMTP_VALIDATE_CERTS="false")
    code, out = run_check()
    assert "certificate NOT verified" in out and out.startswith("smtp: ok ("), out
    assert code == 0


def test_check_starttls_not_offered(smtp_server: SmtpServer, settings_env: Any) -> None:
    settings_env(SMTP_STARTTLS="true")
    code, out = run_check()
    assert out.startswith("smtp: STARTTLS not offered by the server (tls): "), out
    assert code == 1


def test_check_nobody_listening(settings_env: Any) -> None:
    settings_env(SMTP_PORT=str(free_port()))
    code, out = run_check()
    assert out.startswith("smtp: cannot connect (connection): "), out
    assert code == 1


def test_check_is_bounded_by_the_timeout(silent_port: int, settings_env: Any) -> None:
    settings_env(SMTP_PORT=str(silent_port), SMTP_TIMEOUT="1")
    started = time.monotonic()
    code, out = run_check()
    assert time.monotonic() - started < 4
    assert out.startswith("smtp: timed out (timeout): "), out
    assert code == 1


def test_bad_ca_file_is_a_configuration_error(tmp_path: Path, settings_env: Any) -> None:
    bundle = tmp_path / "not-a-ca.pem"
    bundle.write_text("hello\n")
    settings_env(SMTP_CA_FILE=str(bundle))
    code, out = run_check()
    assert "invalid setting SMTP_CA_FILE" in out
    assert code == 1


def test_ready_ok_without_a_key(api: Any, tls_server: TlsSmtpServer, use_tls_server: Any) -> None:
    use_tls_server()
    response = api.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "redis": "ok", "smtp": "ok"}


def test_ready_says_why_smtp_is_unusable(api: Any, use_tls_server: Any) -> None:
    use_tls_server(SMTP_PASSWORD=WRONG)
    response = api.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["redis"] == "ok"
    assert body["smtp"].startswith("smtp: login refused (auth): 535 "), body
    assert WRONG not in response.text


def test_worker_start_logs_the_check_without_waiting_for_it(
    silent_port: int, use_tls_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from celery.signals import worker_ready

    import tasks  # noqa: F401 - connects the app's signal handlers

    # A server that never answers: start-up must not wait for the check.
    use_tls_server(SMTP_PORT=str(silent_port), SMTP_TIMEOUT="1.5")
    caplog.set_level(logging.INFO, logger="tasks.app")
    started = time.monotonic()
    worker_ready.send(sender=None)
    assert time.monotonic() - started < 0.5

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "smtp.check"]

    wait_until(lambda: bool(logged()), 10, "the smtp.check line")
    (record,) = logged()
    assert record.levelno == logging.ERROR
    line = record.fields["result"]  # type: ignore[attr-defined]
    assert line.startswith("smtp: timed out (timeout): "), line


def test_worker_start_logs_ok_at_info(use_tls_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    from celery.signals import worker_ready

    import tasks  # noqa: F401

    use_tls_server()
    caplog.set_level(logging.INFO, logger="tasks.app")
    worker_ready.send(sender=None)
    wait_until(lambda: any(r.getMessage() == "smtp.check" for r in caplog.records), 10, "smtp.check")
    (record,) = [r for r in caplog.records if r.getMessage() == "smtp.check"]
    assert record.levelno == logging.INFO
    assert record.fields["result"].startswith("smtp: ok (localhost:")  # type: ignore[attr-defined]
    assert PASSWORD not in str(record.__dict__)
