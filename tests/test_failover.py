"""Failover between SMTP providers, with two real SMTP servers and a real ``celery -A tasks worker``.

The first provider is stopped while the worker runs: its circuit opens, mail
moves to the second at once without spending retries, nothing is sent twice
(counted per Message-ID at both servers), and once the first is back a probe
finds it and sending moves back.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from neoforge.errors import ConfigurationError
from neoforge.processes import free_port, wait_until
from neoforge.runtime import current
from neoforge.settings import get_settings
from neoforge.smtp.probe import check_smtp_blocking
from tests.conftest import AUTH
from tests.smtp_server import SmtpServer

Workers = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def servers() -> Iterator[list[SmtpServer]]:
    started: list[SmtpServer] = []
    yield started
    for server in started:
        server.stop()


def _start(servers: list[SmtpServer], port: int | None = None) -> SmtpServer:
    server = SmtpServer(port or free_port())
    server.start()
    servers.append(server)
    return server


def _urls(primary: int, backup: int) -> str:
    return (f"smtp://127.0.0.1:{primary}?starttls=false&name=primary,"
            f"smtp://127.0.0.1:{backup}?starttls=false&name=backup")  # fmt: skip


def _send(queue: str, count: int, subject: str) -> list[str]:
    from tasks import send_email

    return [
        send_email.apply_async(
            kwargs={"to": [f"p{i}@example.com"], "subject": subject, "text": "x"}, queue=queue
        ).id
        for i in range(count)
    ]


def _all_sent(client: redis.Redis, ids: list[str]) -> None:
    def done() -> bool:
        with client.pipeline(transaction=False) as pipe:
            for email_id in ids:
                pipe.hget(f"neoforge:email:{email_id}", "status")
            return all(status == "sent" for status in pipe.execute())

    wait_until(done, 30, "every email sent", interval=0.2)


def _providers(client: redis.Redis, email_id: str) -> list[tuple[str, str]]:
    timeline = client.lrange(f"neoforge:email:{email_id}:attempts", 0, -1)
    return [(entry["outcome"], entry.get("provider", "")) for entry in map(json.loads, timeline)]


def test_first_provider_stopped_mid_run_then_back(
    cli_workers: Workers, servers: list[SmtpServer], redis_client: redis.Redis, api: Any
) -> None:
    primary, backup = _start(servers), _start(servers)
    queue = f"failover-{uuid.uuid4().hex[:8]}"
    cli_workers(queue, "--concurrency", "8", SMTP_URLS=_urls(primary.port, backup.port),
                SMTP_FAILOVER_SECONDS="1", SMTP_PAUSE_MAX_SECONDS="2", EMAIL_MAX_RETRIES="0")  # fmt: skip
    before = _send(queue, 10, "before")
    _all_sent(redis_client, before)
    assert len(primary.handler.deliveries()) == 10  # failover: the first provider while it works

    primary.stop()
    servers.remove(primary)
    during = _send(queue, 15, "during")
    _all_sent(redis_client, during)
    assert set(backup.handler.deliveries()) == set(during)
    moved = [e for email_id in during for e in _providers(redis_client, email_id) if e[0] == "failover"]
    assert moved and {provider for _, provider in moved} == {"primary"}
    assert all(_providers(redis_client, i)[-1] == ("sent", "backup") for i in during)
    shown = api.get(f"/emails/{during[0]}", headers=AUTH).json()
    assert shown["attempts"] == 1 and shown["timeline"][-1]["provider"] == "backup"

    # Back on the same port: once its circuit's time is up, a probe finds it and mail moves back.
    again = _start(servers, primary.port)
    circuit = "neoforge:provider:primary:circuit"

    def circuit_time_up() -> bool:
        until = redis_client.hget(circuit, "until")
        return until is None or float(until) < redis_client.time()[0]

    wait_until(circuit_time_up, 10, "the primary's circuit to reach its end", interval=0.1)
    after = _send(queue, 10, "after")
    _all_sent(redis_client, after)
    assert again.handler.deliveries(), "sending never moved back to the first provider"
    wait_until(lambda: not redis_client.exists(circuit), 10, "the primary's circuit to close")

    counts = Counter(primary.handler.deliveries()) + Counter(backup.handler.deliveries())
    counts += Counter(again.handler.deliveries())
    assert set(counts) == set(before + during + after) and set(counts.values()) == {1}
    metrics = api.get("/metrics").text
    assert 'neoforge_provider_failovers_total{provider="primary"}' in metrics
    sent = re.search(r'neoforge_provider_emails_sent_total\{provider="backup"\} (\S+)', metrics)
    assert sent is not None and float(sent[1]) >= 15


def test_round_robin_takes_each_provider_in_turn(settings_env: Callable[..., None]) -> None:
    settings_env(SMTP_URLS=_urls(2525, 2526), SMTP_STRATEGY="round_robin")
    providers = current().providers
    chosen = [providers.choose() for _ in range(4)]
    assert [getattr(e, "name", e) for e in chosen] == ["primary", "backup", "primary", "backup"]


def test_a_bad_provider_url_is_named_without_its_password(settings_env: Callable[..., None]) -> None:
    settings_env(SMTP_URLS="smtp://ada:s3cret-pw@relay.example.com:587,ftp://bob:hunter2@x")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert "SMTP_URLS item 2" in str(caught.value)
    for shown in (str(caught.value), str(caught.value.__cause__)):  # the cause may reach a traceback
        assert "hunter2" not in shown and "s3cret" not in shown
    settings_env(SMTP_URLS="smtps://ada:p%40ss@relay.example.com?rate=14/s")
    (endpoint,) = get_settings().endpoints()
    assert (endpoint.name, endpoint.port, endpoint.ssl_tls, endpoint.user) == (
        "relay.example.com:465", 465, True, "ada")  # fmt: skip
    assert endpoint.password is not None and endpoint.password.get_secret_value() == "p@ss"
    assert endpoint.rate is not None and endpoint.rate.per_second == 14
    assert "p@ss" not in repr(endpoint)


def test_readiness_checks_every_provider(settings_env: Callable[..., None], smtp_server: SmtpServer) -> None:
    """/health/ready and `neoforge check`: ready while one provider works, and the line names each."""
    settings_env(SMTP_URLS=_urls(smtp_server.port, free_port()))
    check = check_smtp_blocking(get_settings())
    assert check.ok and check.line.startswith("smtp: primary: ok (127.0.0.1:")
    assert "backup: cannot connect" in check.line and check.error_class == "connection"
