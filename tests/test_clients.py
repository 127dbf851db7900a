"""Celery's own clients against a worker started the normal way: every standard way in works.

A foreign service that imports none of our code (``send_task`` by name, any queue),
``celery call``, ``apply_async`` with the caller's options, canvas (group, chain, chord,
link, link_error) and ``AsyncResult``: each email is validated, recorded under its task id,
delivered once, and readable through our API. Real processes only: ``celery -A tasks worker``
(no ``-Q``: it consumes every queue a client may use), redis-server, an SMTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import chain, chord, group

from neoforge.processes import stop, wait_until
from tests.conftest import AUTH, ROOT, celery_cli, wait_for_status
from tests.smtp_server import Received, SmtpServer

HOSTNAME = f"clients-{os.getpid()}@neoforge-tests"

# A service of someone else's: a bare Celery app with Celery's defaults (default queue
# "celery"), sending by name. It reads {"url", "sends": [{"kwargs", "options"}], "wait"}
# on stdin and prints, per send, the task id and (with "wait") the outcome of .get().
_FOREIGN = """
import json, sys
from celery import Celery

spec = json.load(sys.stdin)
app = Celery("foreign-service", broker=spec["url"], backend=spec["url"])
out = []
for send in spec["sends"]:
    result = app.send_task("neoforge.send_email", kwargs=send["kwargs"], **send.get("options", {}))
    out.append({"id": result.id})
for entry in out if spec.get("wait") else []:
    result = app.AsyncResult(entry["id"])
    try:
        entry["result"] = result.get(timeout=spec["wait"])
    except Exception as exc:
        entry["error"] = type(exc).__name__
    entry["state"] = result.state
ours = sorted({"tasks", "neoforge", "celeryconfig"} & set(sys.modules))
print(json.dumps({"results": out, "imported": ours}))
"""


class WorkerLog:
    """The worker's log file, read in pieces: each piece once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checked = 0

    def address_lines(self) -> int:
        """How many lines written since the last call carry an address."""
        with self.path.open("rb") as log:
            log.seek(self.checked)
            text = log.read()
        # Whole lines only: an address must not escape by being cut in two.
        text = text[: text.rfind(b"\n") + 1]
        self.checked += len(text)
        return sum("@example.com" in line for line in text.decode(errors="replace").splitlines())


@pytest.fixture(scope="module")
def cli_worker(
    tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str], celery_app: Any
) -> Iterator[WorkerLog]:
    """One ``celery -A tasks worker`` for the module, with the default pool and queues; yields its log."""
    log = WorkerLog(tmp_path_factory.mktemp("clients-worker") / "worker.log")
    process = celery_cli(
        "worker", "--loglevel", "INFO", "--concurrency", "4", "--hostname", HOSTNAME,
        env=environment, log=log.path,
    )  # fmt: skip
    try:
        wait_until(lambda: bool(celery_app.control.ping([HOSTNAME], timeout=0.5)), 60, f"worker {HOSTNAME}")
        yield log
    finally:
        stop(process)
    assert log.address_lines() == 0, f"the worker logged an address after the last test: {log.path}"


@pytest.fixture(autouse=True)
def no_address_in_worker_log(cli_worker: WorkerLog) -> Iterator[None]:
    """What the worker logs carries no address, whichever way the email came in."""
    yield
    leaks = cli_worker.address_lines()
    assert leaks == 0, f"{leaks} line(s) of the worker log carry an address: {cli_worker.path}"


def _email(name: str, subject: str, **extra: Any) -> dict[str, Any]:
    body = {"to": [f"{name}@example.com"], "subject": subject, "text": f"Private body for {name}."}
    return {**body, **extra}


def _foreign(url: str, sends: list[dict[str, Any]], wait: float = 0) -> list[dict[str, Any]]:
    """Run the foreign service in its own interpreter, outside the repository."""
    done = subprocess.run(
        [sys.executable, "-c", _FOREIGN],
        input=json.dumps({"url": url, "sends": sends, "wait": wait}),
        cwd=Path("/"), capture_output=True, text=True, timeout=60 + wait * len(sends), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["imported"] == [], "the foreign service imported our code"
    return list(answer["results"])


def _received(smtp_server: SmtpServer, subject: str) -> Received:
    """The one message with SUBJECT (the caller waited for its email to be sent)."""
    found = smtp_server.handler.by_subject(subject)
    assert len(found) == 1, f"{len(found)} copies of {subject!r} reached the SMTP server"
    return found[0]


def _api_status(api: Any, email_id: str) -> dict[str, Any]:
    response = api.get(f"/emails/{email_id}", headers=AUTH)
    assert response.status_code == 200, (email_id, response.status_code, response.text)
    record: dict[str, Any] = response.json()
    assert record["id"] == email_id
    return record


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _no_content_in_results(client: redis.Redis, *secrets: str) -> None:
    """Celery's result backend holds outcomes, never an address or a body."""
    keys = list(client.scan_iter("celery-task-meta-*"))
    assert keys, "no result in Celery's result backend"
    for key in keys:
        value = str(client.get(key))
        for secret in secrets:
            assert secret not in value, f"{key} holds {secret!r}"


def _drained(client: redis.Redis) -> bool:
    """No message waiting in any queue and none in a worker's hands."""
    waiting = sum(int(client.llen(queue)) for queue in ("transactional", "bulk", "celery"))
    return waiting == 0 and int(client.hlen("unacked")) == 0


# 1 and 8: send_task by name from a service that has none of our code.


@pytest.mark.parametrize("queue", [None, "transactional", "bulk"])
def test_foreign_send_task_is_delivered(
    queue: str | None,
    api: Any,
    smtp_server: SmtpServer,
    redis_client: redis.Redis,
    environment: dict[str, str],
) -> None:
    """No queue is a silent sink: Celery's default queue "celery" is consumed too."""
    subject = f"foreign via {queue or 'default queue'}"
    kwargs = _email("foreign", subject)
    options = {"queue": queue} if queue else {}
    [sent] = _foreign(environment["REDIS_URL"], [{"kwargs": kwargs, "options": options}], wait=20)
    email_id = sent["id"]

    assert sent.get("error") is None, sent
    assert sent["state"] == "SUCCESS"
    assert sent["result"]["status"] == "sent" and sent["result"]["id"] == email_id
    wait_for_status(email_id, {"sent"})
    assert _api_status(api, email_id)["status"] == "sent"
    received = _received(smtp_server, subject)
    assert received.rcpt_tos == ["foreign@example.com"]
    assert email_id in received.message["Message-ID"]
    _no_content_in_results(redis_client, "foreign@example.com", "Private body")


# 2: invalid input through send_task fails the email, clearly, never as a TypeError.


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"to": ["not-an-address"], "subject": "bad address", "text": "x"}, "to"),
        ({"to": ["t@example.com"], "subject": "bad template", "template": "no_such_template",
          "context": {}}, "template"),
        ({"to": ["t@example.com"], "subject": "unknown keyword", "text": "x", "foo": 1}, "foo"),
    ],
    ids=["address", "template", "keyword"],
)  # fmt: skip
def test_foreign_send_task_with_invalid_kwargs_is_a_clear_failure(
    kwargs: dict[str, Any],
    field: str,
    api: Any,
    smtp_server: SmtpServer,
    redis_client: redis.Redis,
    environment: dict[str, str],
) -> None:
    [sent] = _foreign(
        environment["REDIS_URL"], [{"kwargs": kwargs, "options": {"queue": "transactional"}}], wait=20
    )
    email_id = sent["id"]
    # .get() raises the task's error: not a bare TypeError, not a timeout.
    assert sent.get("error") not in (None, "TypeError", "TimeoutError"), sent
    assert sent["state"] == "FAILURE"

    record = _api_status(api, email_id)
    assert record["status"] == "failed"
    assert record["error_class"] == "invalid"
    assert field in record["last_error"]

    dead = api.get("/emails", params={"status": "failed"}, headers=AUTH)
    assert dead.status_code == 200
    assert email_id in [item["id"] for item in dead.json()["items"]]

    metrics = api.get("/metrics", headers=AUTH).text
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("neoforge_emails_failed_total") and 'error_class="invalid"' in line
    ]
    assert sum(counted) == 1, [line for line in metrics.splitlines() if "failed_total" in line]
    assert smtp_server.handler.messages == []
    _no_content_in_results(redis_client, "t@example.com")


# 3: the ``celery call`` command.


def test_celery_call_command(api: Any, smtp_server: SmtpServer, environment: dict[str, str]) -> None:
    kwargs = _email("caller", "from celery call")
    called = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "call", "neoforge.send_email",
         "--kwargs", json.dumps(kwargs)],
        cwd=ROOT, env={**os.environ, **environment}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    email_id = called.stdout.strip().splitlines()[-1]

    wait_for_status(email_id, {"sent"})
    assert _api_status(api, email_id)["status"] == "sent"
    assert _received(smtp_server, "from celery call").rcpt_tos == ["caller@example.com"]


# 4: apply_async with the caller's options.


def test_callers_task_id_is_the_email_id_and_is_sent_once(
    api: Any, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    kwargs = _email("own-id", "caller's task id")
    result = send_email.apply_async(kwargs=kwargs, task_id="my-own-id-123")
    assert result.id == "my-own-id-123"
    wait_for_status("my-own-id-123", {"sent"})
    assert _api_status(api, "my-own-id-123")["status"] == "sent"
    assert "my-own-id-123" in _received(smtp_server, "caller's task id").message["Message-ID"]

    again = send_email.apply_async(kwargs=kwargs, task_id="my-own-id-123")
    assert again.id == "my-own-id-123"
    # Whatever the second call queued has been taken and finished by the worker.
    wait_until(lambda: _drained(redis_client), 20, "queues drained")
    record = _api_status(api, "my-own-id-123")
    assert record["status"] == "sent" and record["attempts"] == 1
    _received(smtp_server, "caller's task id")
    _no_content_in_results(redis_client, "own-id@example.com", "Private body")


def test_countdown_delays_the_send(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    queued_at = datetime.now(UTC).timestamp()
    result = send_email.apply_async(kwargs=_email("later", "counted down"), countdown=1)
    wait_for_status(result.id, {"sent"})
    record = _api_status(api, result.id)
    assert _seconds(record["sent_at"]) - _seconds(record["created_at"]) >= 0.9
    assert _received(smtp_server, "counted down").at >= queued_at + 0.9


@pytest.mark.parametrize(
    "options",
    [{"expires": "past datetime"}, {"countdown": 1, "expires": 0.2}],
    ids=["past-datetime", "seconds-passed-before-countdown"],
)
def test_celery_expires_option_expires_the_email(
    options: dict[str, Any], api: Any, smtp_server: SmtpServer
) -> None:
    from tasks import send_email

    if options["expires"] == "past datetime":
        options = {"expires": datetime.now(UTC) - timedelta(seconds=5)}
    result = send_email.apply_async(kwargs=_email("stale", "stale code"), **options)
    wait_for_status(result.id, {"expired"})
    assert _api_status(api, result.id)["sent_at"] is None
    assert smtp_server.handler.by_subject("stale code") == []


def test_queue_and_priority_options_are_accepted(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    result = send_email.apply_async(
        kwargs=_email("newsletter", "bulk with priority"), queue="bulk", priority=5
    )
    wait_for_status(result.id, {"sent"})
    assert _api_status(api, result.id)["queue"] == "bulk"
    _received(smtp_server, "bulk with priority")


# 5: canvas.


def test_group_delivers_every_email_and_gets_their_outcomes(
    api: Any, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    from tasks import send_email

    batch = group(
        send_email.s(**_email("group-a", "group a")), send_email.s(**_email("group-b", "group b"))
    ).apply_async()
    outcomes = batch.get(timeout=30)

    ids = [result.id for result in batch.results]
    assert [outcome["status"] for outcome in outcomes] == ["sent", "sent"]
    assert [outcome["id"] for outcome in outcomes] == ids
    for email_id in ids:
        assert _api_status(api, email_id)["status"] == "sent"
    assert _received(smtp_server, "group a").rcpt_tos == ["group-a@example.com"]
    assert _received(smtp_server, "group b").rcpt_tos == ["group-b@example.com"]
    _no_content_in_results(redis_client, "group-a@example.com", "group-b@example.com", "Private body")


def test_chain_delivers_in_order(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    result = chain(
        send_email.si(**_email("chain-1", "chain first")), send_email.si(**_email("chain-2", "chain second"))
    ).apply_async()
    assert result.get(timeout=30)["status"] == "sent"
    assert result.parent is not None
    for email_id in (result.parent.id, result.id):
        assert _api_status(api, email_id)["status"] == "sent"
    assert _received(smtp_server, "chain first").at <= _received(smtp_server, "chain second").at


def test_signature_options_queue_and_countdown(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    queued_at = datetime.now(UTC).timestamp()
    result = send_email.s(**_email("sig", "signature options")).set(queue="bulk", countdown=1).apply_async()
    wait_for_status(result.id, {"sent"})
    record = _api_status(api, result.id)
    assert record["queue"] == "bulk"
    assert _seconds(record["sent_at"]) - _seconds(record["created_at"]) >= 0.9
    assert _received(smtp_server, "signature options").at >= queued_at + 0.9


def test_chord_sends_its_body_after_the_header(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    result = chord(
        [send_email.s(**_email("chord-a", "chord a")), send_email.s(**_email("chord-b", "chord b"))]
    )(send_email.si(**_email("chord-done", "chord body")))
    outcome = result.get(timeout=30)
    assert outcome["status"] == "sent" and outcome["id"] == result.id
    assert _api_status(api, result.id)["status"] == "sent"
    header = [_received(smtp_server, subject).at for subject in ("chord a", "chord b")]
    assert _received(smtp_server, "chord body").at >= max(header)
    assert len(smtp_server.handler.messages) == 3


def test_link_sends_the_callback_email_after_the_first(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    callback = send_email.si(**_email("linked", "linked email"))
    callback.freeze()
    first = send_email.apply_async(kwargs=_email("leader", "leading email"), link=callback)
    wait_for_status(first.id, {"sent"})
    wait_for_status(callback.id, {"sent"})
    assert _api_status(api, callback.id)["status"] == "sent"
    assert _received(smtp_server, "leading email").at <= _received(smtp_server, "linked email").at


def test_link_error_sends_the_errback_email_after_a_permanent_failure(
    api: Any, smtp_server: SmtpServer
) -> None:
    from tasks import send_email

    smtp_server.handler.rcpt_replies["bounce@example.com"] = "550 5.1.1 No such user"
    errback = send_email.si(**_email("ops", "an email failed"))
    errback.freeze()
    doomed = send_email.apply_async(kwargs=_email("bounce", "will bounce"), link_error=errback)
    wait_for_status(doomed.id, {"failed"})
    wait_for_status(errback.id, {"sent"})
    assert _api_status(api, errback.id)["status"] == "sent"
    assert _received(smtp_server, "an email failed").rcpt_tos == ["ops@example.com"]
    assert smtp_server.handler.by_subject("will bounce") == []


# 6: AsyncResult tells the same story as our API.


def test_async_result_get_returns_the_outcome(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    result = send_email.delay(**_email("waiter", "awaited"))
    outcome = result.get(timeout=30)
    assert outcome["status"] == "sent" and outcome["id"] == result.id
    assert result.state == "SUCCESS"
    assert _api_status(api, result.id)["status"] == "sent"
    _received(smtp_server, "awaited")


def test_async_result_of_a_permanent_failure_raises(api: Any, smtp_server: SmtpServer) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from tasks import send_email

    smtp_server.handler.data_replies.append("550 5.7.1 no")
    result = send_email.delay(**_email("rejected", "rejected on data"))
    with pytest.raises(Exception) as raised:  # noqa: PT011 - any error of the task's, not a timeout
        result.get(timeout=30)
    assert not isinstance(raised.value, CeleryTimeoutError | TimeoutError)
    assert result.state == "FAILURE"
    record = _api_status(api, result.id)
    assert record["status"] == "failed" and record["error_class"] == "smtp_5xx"
