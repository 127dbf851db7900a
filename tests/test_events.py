"""Delivery events for in-process listeners: the ``email_event`` signal, fired in the worker.

Celery's in-process worker, real Redis and a real SMTP server; the listener is a plain receiver.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neoforge.processes import wait_until
from neoforge.signals import email_event
from tests.conftest import AUTH, wait_for_status
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.usefixtures("worker")


class Listener:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, sender: Any = None, event: dict[str, Any] | None = None, **_: Any) -> None:
        assert event is not None
        with self.lock:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)

    def of(self, email_id: str) -> list[str]:
        with self.lock:
            return [e["type"] for e in self.events if e["email_id"] == email_id]

    def wait(self, email_id: str, kinds: list[str]) -> list[dict[str, Any]]:
        wait_until(lambda: self.of(email_id) == kinds, 15, f"{kinds} for {email_id}")
        with self.lock:
            return [e for e in self.events if e["email_id"] == email_id]


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    email_event.connect(found, weak=False)
    yield found
    email_event.disconnect(found)


def test_every_outcome_is_an_event(listener: Listener, smtp_server: SmtpServer, api: Any) -> None:
    from tasks import send_email

    sent = send_email.delay(to=["ada@example.com"], subject="One", text="body text one").id
    [event] = listener.wait(sent, ["email.sent"])
    assert event["status"] == "sent" and event["attempt"] == 1 and event["priority"] == "transactional"
    assert event["recipients"] == [{"address": "a***@example.com", "outcome": "delivered"}]
    assert listener.threads != {threading.current_thread().name}  # fired in the worker, not by the caller

    smtp_server.handler.data_replies.append("451 4.3.0 try again later")
    retried = send_email.delay(to=["bob@example.com"], subject="Two", text="body text two").id
    deferred, done = listener.wait(retried, ["email.deferred", "email.sent"])
    assert deferred["status"] == "retrying" and deferred["smtp_code"] == 451 and deferred["retry_in"] > 0
    assert deferred["error_class"] == "smtp_4xx" and done["attempt"] == 2

    smtp_server.handler.data_replies.append("554 5.6.0 message refused")
    failed = send_email.delay(to=["cy@example.com"], subject="Three", text="body text three").id
    [event] = listener.wait(failed, ["email.failed"])
    assert event["status"] == "failed" and event["error_class"] == "smtp_5xx" and "554" in event["error"]

    api.post("/suppressions", json={"address": "dee@example.com"}, headers=AUTH)
    suppressed = send_email.delay(to=["dee@example.com"], subject="Four", text="body text four").id
    [event] = listener.wait(suppressed, ["email.suppressed"])
    assert event["recipients"] == [{"address": "d***@example.com", "outcome": "suppressed"}]

    expired = send_email.apply_async(kwargs={"to": ["eve@example.com"], "subject": "Five", "text": "x"},
                                     expires=0.001).id  # fmt: skip
    [event] = listener.wait(expired, ["email.expired"])
    assert event["status"] == "expired"
    wait_for_status(expired, {"expired"})

    text = repr(listener.events)
    assert "body text" not in text and "@example.com'" not in text.replace("***@example.com'", "")


def test_addresses_only_when_asked(listener: Listener, settings_env: Callable[..., None]) -> None:
    from tasks import send_email

    settings_env(EMAIL_WEBHOOK_INCLUDE_ADDRESS="true")
    email_id = send_email.delay(to=["ada@example.com"], cc=["bob@example.com"], subject="Hi", text="x").id
    [event] = listener.wait(email_id, ["email.sent"])
    assert sorted(r["address"] for r in event["recipients"]) == ["ada@example.com", "bob@example.com"]
