"""The SMTP pool against a real server: a refused login leaves no session open, idle connections close."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from neoforge.errors import SetupError
from neoforge.processes import free_port, wait_until
from neoforge.runtime import Sender
from neoforge.settings import get_settings
from neoforge.smtp import Pool, deliver
from tests.tls_smtp import TlsSmtpServer, smtp_settings

MESSAGE = b"From: noreply@probe.test\r\nTo: someone@probe.test\r\nSubject: pool\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSmtpServer]:
    server = TlsSmtpServer(free_port(), tmp_path_factory.mktemp("tls-smtp"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def point_at(tls_server: TlsSmtpServer, settings_env: Any) -> Any:
    tls_server.reset()

    def point(**overrides: str) -> None:
        settings_env(**smtp_settings(tls_server, **overrides))

    return point


@pytest.fixture
def sender() -> Iterator[Any]:
    """A sender loop of its own, as the runtime has, built once the test has set its settings."""
    made: list[Sender] = []

    def make() -> Sender:
        made.append(Sender(get_settings()))
        return made[-1]

    yield make
    for one in made:
        if not one.loop.is_closed():
            one.close()


def test_refused_logins_stay_within_max_connections_and_leave_no_session(
    tls_server: TlsSmtpServer, point_at: Any
) -> None:
    point_at(SMTP_PASSWORD="wrong-password-9876", SMTP_MAX_CONNECTIONS="3")
    tls_server.handler.ehlo_delay = 0.1  # sessions overlap: the cap, not luck, keeps them at 3

    async def attempts(count: int) -> list[BaseException | object]:
        pool = Pool(get_settings())
        return await asyncio.gather(
            *(deliver(pool, "noreply@probe.test", MESSAGE, ["someone@probe.test"]) for _ in range(count)),
            return_exceptions=True,
        )

    results = asyncio.run(attempts(10))
    assert all(isinstance(r, SetupError) and r.error_class == "auth" for r in results), results
    assert tls_server.sessions.total == 10
    # Each refused session is ended (QUIT) before its slot goes to the next connection.
    assert tls_server.sessions.peak == 3
    wait_until(lambda: tls_server.sessions.now == 0, 5, "every refused session to end")


def test_idle_connections_close_without_new_mail(
    tls_server: TlsSmtpServer, point_at: Any, sender: Any
) -> None:
    point_at(SMTP_IDLE_TIMEOUT="1")
    loop = sender()
    for _ in range(2):
        loop.submit(deliver(loop.pool, "noreply@probe.test", MESSAGE, ["someone@probe.test"])).result(10)
    # Reused within the idle timeout: one session carried both.
    assert len(tls_server.handler.messages) == 2
    assert tls_server.sessions.total == 1
    assert len(loop.pool.idle) == 1
    # Nothing else comes: the pool closes it on its own after SMTP_IDLE_TIMEOUT.
    wait_until(lambda: tls_server.sessions.now == 0, 10, "the idle connection to be closed")
    assert loop.pool.idle == []
