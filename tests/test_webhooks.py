"""Signed webhooks: the real ``celery -A tasks worker`` POSTs delivery events to a real HTTP receiver
process, retries a failing receiver with backoff, dead-letters what never gets through, and requeues it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from neoforge.processes import free_port, start, stop, wait_until
from tests.conftest import AUTH, ROOT, wait_for_status
from tests.smtp_server import SmtpServer

SECRET = "whsec-test-0123456789"


class Receiver:
    """tests/webhook_receiver.py in its own process; what it was sent, read from its log."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "requests.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self, fail_first: int = 0) -> None:
        script = str(ROOT / "tests" / "webhook_receiver.py")
        self.process = start([sys.executable, script, str(self.port), str(self.log), str(fail_first)])
        wait_until(self._listening, 10, "the webhook receiver")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests() if r["answered"] == 204]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    found = Receiver(tmp_path)
    yield found
    found.stop()


def _readme_verify() -> Callable[..., bool]:
    """The verification snippet of the README, as a receiver would paste it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import hashlib, hmac, time\n+def verify\(.*?)```", text, re.S)
    assert block is not None, "the README's webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own README, on purpose
    return cast(Callable[..., bool], namespace["verify"])


def _verify(request: dict[str, Any]) -> bool:
    headers = {name.lower(): value for name, value in request["headers"].items()}
    verify = _readme_verify()
    return verify(
        SECRET, headers["x-neoforge-timestamp"], headers["x-neoforge-signature"], request["body"].encode()
    )


def _metric(api: Any, line: str) -> bool:
    return line in api.get("/metrics").text


def test_signed_events_retried_dead_lettered_and_requeued(
    cli_workers: Callable[..., subprocess.Popen[bytes]], receiver: Receiver, smtp_server: SmtpServer, api: Any
) -> None:
    from tasks import send_email

    receiver.start(fail_first=2)
    env = {"EMAIL_WEBHOOK_URL": receiver.url, "EMAIL_WEBHOOK_SECRET": SECRET,
           "EMAIL_WEBHOOK_MAX_RETRIES": "3", "EMAIL_WEBHOOK_RETRY_BACKOFF": "0.2",
           "EMAIL_WEBHOOK_RETRY_BACKOFF_MAX": "0.5"}  # fmt: skip
    cli_workers(None, **env)
    smtp_server.handler.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    sent = send_email.delay(to=["ada@example.com"], subject="Hooked", text="secret body text").id
    failed = send_email.delay(to=["nobody@example.com"], subject="Bounced", text="secret body text").id
    wait_for_status(sent, {"sent"}, timeout=30)
    wait_for_status(failed, {"failed"}, timeout=30)

    # The receiver failed the first two POSTs: they came again, with backoff, and got through.
    wait_until(lambda: len(receiver.delivered()) == 2, 20, "both events delivered")
    requests = receiver.requests()
    assert [r["answered"] for r in requests][:2] == [500, 500] and len(requests) == 4
    assert all(_verify(r) for r in requests)
    assert all(r["path"] == "/hooks" and r["headers"]["Content-Type"] == "application/json" for r in requests)
    tampered = dict(requests[-1], body=requests[-1]["body"].replace("email.", "emall."))
    assert not _verify(tampered)
    events = {e["type"]: e for e in receiver.delivered()}
    assert events["email.sent"]["email_id"] == sent and events["email.sent"]["status"] == "sent"
    assert events["email.failed"]["email_id"] == failed
    assert events["email.failed"]["error_class"] == "recipient_rejected"
    assert events["email.sent"]["recipients"] == [{"address": "a***@example.com", "outcome": "delivered"}]
    raw = receiver.log.read_text()
    assert "secret body text" not in raw and "ada@example.com" not in raw and "nobody@example.com" not in raw
    wait_until(
        lambda: _metric(api, 'neoforge_webhook_deliveries_total{outcome="retried"} 2.0'), 10, "retried"
    )
    assert _metric(api, 'neoforge_webhook_deliveries_total{outcome="delivered"} 2.0')

    # A receiver that stays down: retries spent, the delivery is a dead letter, visible and counted.
    receiver.stop()
    lost = send_email.delay(to=["ada@example.com"], subject="Lost", text="x").id
    wait_for_status(lost, {"sent"}, timeout=30)
    wait_until(lambda: len(api.get("/webhooks/failed", headers=AUTH).json()) == 1, 30, "a dead letter")
    [dead] = api.get("/webhooks/failed", headers=AUTH).json()
    assert dead["event"]["email_id"] == lost and dead["attempts"] == 4
    assert "unreachable" in dead["error"]
    assert _metric(api, 'neoforge_webhook_deliveries_total{outcome="failed"} 1.0')
    assert _metric(api, "neoforge_webhook_dead_letters 1.0")

    # Once the receiver is back, a requeue delivers it: the same event, under the same id.
    receiver.start()
    assert api.post("/webhooks/requeue", headers=AUTH).json() == {"requeued": 1}
    wait_until(lambda: any(e["email_id"] == lost for e in receiver.delivered()), 20, "the requeued event")
    assert [e["id"] for e in receiver.delivered() if e["email_id"] == lost] == [dead["event"]["id"]]
    assert api.get("/webhooks/failed", headers=AUTH).json() == []
