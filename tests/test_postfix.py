"""Delivery against a real Postfix (STARTTLS with a test CA, SASL login, an access map, a size
limit, Maildir delivery): what a deployer's relay does, read back from what Postfix delivered.

aiosmtpd (tests/smtp_server.py) stays for faults Postfix cannot inject.
"""

from __future__ import annotations

import base64
import email
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest
import redis

from neoforge.processes import stop, wait_until
from neoforge.runtime import current
from tests.conftest import AUTH, wait_for_status
from tests.postfix import Postfix, postfix_server

__all__ = ["postfix_server"]  # the fixture, imported for pytest

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _smtp_env(postfix: Postfix, **changes: str) -> dict[str, str]:
    env = {
        "SMTP_HOST": postfix.host,
        "SMTP_PORT": str(postfix.port),
        "SMTP_STARTTLS": "true",
        "SMTP_SSL_TLS": "false",
        "SMTP_CA_FILE": str(postfix.ca_file),
        "SMTP_USER": postfix.user,
        "SMTP_PASSWORD": postfix.password,
        "EMAIL_ALLOW_SPECIAL_DOMAINS": "local",
        "SMTP_PAUSE_SECONDS": "0.5",
        "SMTP_PAUSE_MAX_SECONDS": "1",
    }
    env.update(changes)
    return env


def _all_raw(postfix: Postfix) -> list[bytes]:
    return [path.read_bytes() for path in postfix.folder.rglob("*") if path.parent.name in ("new", "cur")]


def _copies(postfix: Postfix) -> Counter[str]:
    """How many copies of each Message-ID Postfix delivered (one per recipient mailbox)."""
    found: Counter[str] = Counter()
    for raw in _all_raw(postfix):
        message = email.message_from_bytes(raw, policy=default)
        found[str(message["Message-ID"]).strip("<>").partition("@")[0]] += 1
    return found


def _parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, _class=EmailMessage, policy=default)
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
        for name, value in part.items():
            assert not getattr(value, "defects", []), (name, value.defects)
        if part.is_multipart():
            assert "Content-Transfer-Encoding" not in part and part.get_param("charset") is None
    return message


def _tree(part: EmailMessage) -> Any:
    if part.is_multipart():
        return {part.get_content_type(): [_tree(p) for p in part.iter_parts()]}  # type: ignore[arg-type]
    return part.get_content_type()


@pytest.mark.usefixtures("worker")
def test_every_mime_shape_arrives_whole_and_valid(postfix_server: Postfix, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(**_smtp_env(postfix_server))
    csv = "prix;café\n1;2\n".encode()
    attachments = [
        {"filename": "Relevé.csv", "content": base64.b64encode(csv).decode(), "content_type": "text/csv"},
        {"filename": "logo.png", "content": base64.b64encode(PNG).decode(), "content_type": "image/png",
         "content_id": "logo@corp.local"},
    ]  # fmt: skip
    shapes: dict[str, dict[str, Any]] = {
        "text": {"text": "Hello\n" + "long line " * 150},
        "html": {"html": "<p>Hello</p>"},
        "alternative": {"text": "Hello", "html": "<p>Hello</p>"},
        "mixed": {"text": "See attached", "html": "<p>See <img src='cid:logo@corp.local'></p>",
                  "attachments": attachments},
    }  # fmt: skip
    expected = {
        "text": "text/plain",
        "html": "text/html",
        "alternative": {"multipart/alternative": ["text/plain", "text/html"]},
        "mixed": {"multipart/mixed": [
            {"multipart/alternative": ["text/plain", {"multipart/related": ["text/html", "image/png"]}]},
            "text/csv",
        ]},
    }  # fmt: skip
    ids = {}
    for name, body in shapes.items():
        ids[name] = send_email.delay(
            to=[f'"Zoë Ünïcode" <shape-{name}@example.com>'], cc=["ops@corp.local"],
            subject=f"Grüße — {name}", **body,
        ).id  # fmt: skip
    for name, email_id in ids.items():
        wait_for_status(email_id, {"sent"}, timeout=30)
        # Accepted means queued by Postfix; its delivery to the Maildir follows.
        postfix_server.wait_delivered(f"shape-{name}@example.com", 1)
        [raw] = postfix_server.raw_delivered(f"shape-{name}@example.com")
        message = _parsed(raw)
        assert _tree(message) == expected[name], name
        assert message["Subject"] == f"Grüße — {name}"
        assert message["To"].addresses[0].display_name == "Zoë Ünïcode"
        assert message["Message-ID"] == f"<{email_id}@neoforge.example.com>"
        postfix_server.wait_delivered("ops@corp.local", 1)
    [raw] = postfix_server.raw_delivered("shape-mixed@example.com")
    files = {part.get_filename(): part for part in _parsed(raw).walk() if part.get_filename()}
    assert files["Relevé.csv"].get_content() == csv.decode()
    assert files["Relevé.csv"].get_param("charset") == "utf-8"
    assert files["logo.png"].get_payload(decode=True) == PNG


@pytest.mark.usefixtures("worker")
def test_greylisted_co_recipient_is_delivered_once(postfix_server: Postfix, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(**_smtp_env(postfix_server, EMAIL_RETRY_BACKOFF="1", EMAIL_RETRY_BACKOFF_MAX="1",
                             EMAIL_MAX_RETRIES="30"))  # fmt: skip
    postfix_server.set_access("grey@example.com", "450 4.2.0 greylisted, try again")
    email_id = send_email.delay(to=["first@example.com", "grey@example.com"], subject="grey", text="x").id
    postfix_server.wait_delivered("first@example.com", 1, timeout=20)
    record = wait_for_status(email_id, {"retrying"})
    assert record["error_class"] == "smtp_4xx" and record["delivered"] == "some"
    postfix_server.clear_access()
    record = wait_for_status(email_id, {"sent"}, timeout=30)
    assert record["delivered"] == "all"
    postfix_server.wait_delivered("grey@example.com", 1)
    assert len(postfix_server.delivered("first@example.com")) == 1
    assert len(postfix_server.delivered("grey@example.com")) == 1
    assert "grey@example.com" not in str(record)


@pytest.mark.usefixtures("worker")
def test_rejected_recipient_and_size_limit(postfix_server: Postfix, settings_env: Any, api: Any) -> None:
    from tasks import send_email

    settings_env(**_smtp_env(postfix_server, EMAIL_MAX_ATTACHMENTS_BYTES="1000000"))
    postfix_server.set_access("gone@example.com", "550 5.1.1 no such user")
    partial = send_email.delay(to=["kept@example.com", "gone@example.com"], subject="partial", text="x").id
    record = wait_for_status(partial, {"sent"}, timeout=30)
    assert [o["outcome"] for o in record["outcomes"]] == ["delivered", "rejected"]
    assert record["outcomes"][1]["address"] == "g***@example.com" and record["outcomes"][1]["code"] == 550
    # Postfix said that mailbox does not exist: it is suppressed, never offered to Postfix again.
    again = send_email.delay(to=["gone@example.com"], subject="again", text="x").id
    assert wait_for_status(again, {"suppressed"}, timeout=30)["attempts"] == 0
    # Larger than Postfix's message_size_limit (it says SIZE 100000 in EHLO): fails before DATA.
    big = base64.b64encode(b"x" * 150_000).decode()
    large = send_email.delay(to=["big@example.com"], subject="big", text="x",
                             attachments=[{"filename": "big.bin", "content": big}]).id  # fmt: skip
    record = wait_for_status(large, {"failed"}, timeout=30)
    assert record["error_class"] == "size" and record["attempts"] == 1
    assert postfix_server.delivered("big@example.com") == []
    # Over EMAIL_MAX_MESSAGE_BYTES: refused at the API, nothing queued.
    settings_env(EMAIL_MAX_MESSAGE_BYTES="50000")
    sixty_kb = base64.b64encode(b"x" * 60_000).decode()
    body = {"to": ["big@example.com"], "subject": "big", "text": "x",
            "attachments": [{"filename": "big.bin", "content": sixty_kb}]}  # fmt: skip
    response = api.post("/emails", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "attachments"]


@pytest.mark.usefixtures("worker")
def test_certificates_private_ca_or_a_pause(
    postfix_server: Postfix, settings_env: Any, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    # Without the private CA the certificate cannot be checked: sending pauses, nothing dead-lettered.
    settings_env(**_smtp_env(postfix_server, SMTP_CA_FILE=""))
    email_id = send_email.delay(to=["ca@example.com"], subject="ca", text="x").id
    record = wait_for_status(email_id, {"retrying"}, timeout=20)
    assert record["error_class"] == "tls" and record["attempts"] == 0
    assert redis_client.hget("neoforge:smtp:paused", "error_class") == "tls"
    # With it (hostname checked): the pause ends at the next probe and the email goes out.
    settings_env(**_smtp_env(postfix_server))
    record = wait_for_status(email_id, {"sent"}, timeout=30)
    assert len(postfix_server.wait_delivered("ca@example.com", 1)) == 1
    assert not redis_client.exists("neoforge:smtp:paused")


@pytest.fixture
def cli_worker(cli_workers: Callable[..., Any]) -> Callable[..., Any]:
    def start(queue: str, **env: str) -> Any:
        return cli_workers(queue, **env)

    return start


def test_wrong_password_pauses_without_leaking_sessions(
    postfix_server: Postfix,
    cli_worker: Callable[..., Any],
    redis_client: redis.Redis,
    environment: dict[str, str],
) -> None:
    """60 emails under a wrong password: the relay never sees more sessions than the cap, nothing is
    dead-lettered, and once the password is fixed (the worker restarted with it) each arrives once."""
    from tasks import send_email

    queue = f"pf-{uuid.uuid4().hex[:6]}"
    cap = 5
    # The cap is per worker process: one process, so the relay's session count is the cap's.
    wrong = _smtp_env(postfix_server, SMTP_PASSWORD="rotated-away-123", SMTP_MAX_CONNECTIONS=str(cap),
                      WORKER_PROCESSES="1")  # fmt: skip
    ids = [send_email.apply_async(kwargs={"to": [f"pw{i}@example.com"], "subject": "pw", "text": "x"},
                                  queue=queue).id for i in range(60)]  # fmt: skip
    most = 0
    watching = threading.Event()

    def watch() -> None:
        nonlocal most
        while not watching.is_set():
            most = max(most, postfix_server.open_sessions())
            watching.wait(0.01)

    # Only the CLI worker's sessions count: the in-process worker of the tests above closes its own.
    current().retire(5)
    wait_until(lambda: postfix_server.open_sessions() == 0, 10, "no session from earlier tests")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    first = cli_worker(queue, **wrong)
    wait_until(lambda: redis_client.hget("neoforge:smtp:paused", "error_class") == "auth", 30, "the pause")
    wait_until(lambda: int(redis_client.hget("neoforge:smtp:paused", "trips") or 0) >= 3, 30, "failed probes")
    stop(first, timeout=30)
    statuses = Counter(str(redis_client.hget(f"neoforge:email:{i}", "status")) for i in ids)
    assert statuses["failed"] == 0 and statuses["sent"] == 0, statuses
    wait_until(lambda: postfix_server.open_sessions() == 0, 10, "no session left open")
    cli_worker(queue, **_smtp_env(postfix_server, SMTP_MAX_CONNECTIONS=str(cap), WORKER_PROCESSES="1"))
    wait_until(lambda: all(redis_client.hget(f"neoforge:email:{i}", "status") == "sent" for i in ids), 90,
               "all 60 sent")  # fmt: skip
    watching.set()
    watcher.join()
    # Postfix's side of a session whose QUIT was just answered can still read ESTABLISHED for an
    # instant while the slot it freed is reused: one session in teardown, never a leak (the old
    # code left one open per failed login, measured at 100 after 150 emails).
    assert most <= cap + 1, most
    wait_until(lambda: sum(_copies(postfix_server)[i] for i in ids) >= len(ids), 30, "all in the Maildirs")
    copies = _copies(postfix_server)
    assert [copies[i] for i in ids] == [1] * len(ids)
    assert not redis_client.zcard("neoforge:failed")


def test_relay_restart_mid_stream_loses_and_repeats_nothing(
    postfix_server: Postfix, cli_worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    from tasks import send_email

    queue = f"pf-{uuid.uuid4().hex[:6]}"
    env = _smtp_env(
        postfix_server, EMAIL_RETRY_BACKOFF="0.5", EMAIL_RETRY_BACKOFF_MAX="1", EMAIL_MAX_RETRIES="20"
    )
    ids = [send_email.apply_async(kwargs={"to": [f"rs{i}@example.com"], "subject": "restart", "text": "x"},
                                  queue=queue).id for i in range(60)]  # fmt: skip
    cli_worker(queue, **env)
    wait_until(lambda: sum(1 for i in ids if _copies(postfix_server)[i]) >= 20, 60, "20 delivered")
    postfix_server.restart()
    wait_until(lambda: all(redis_client.hget(f"neoforge:email:{i}", "status") == "sent" for i in ids), 120,
               "all sent after the restart")  # fmt: skip
    wait_until(lambda: sum(_copies(postfix_server)[i] for i in ids) >= len(ids), 30, "all in the Maildirs")
    copies = _copies(postfix_server)
    assert [copies[i] for i in ids] == [1] * len(ids)
    assert not redis_client.zcard("neoforge:failed")
