"""``neoforge flower``: no start without credentials; with them, a browser sees our tasks and no content.

Real processes only: ``celery -A tasks worker`` and ``neoforge flower`` as subprocesses, headless
Chromium (the Debian package, driven by Playwright) as the operator's browser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from neoforge.processes import free_port, start, stop, wait_until
from tests.conftest import AUTH, ROOT, celery_cli, wait_for_status
from tests.smtp_server import SmtpServer

USER = "ops"
PASSWORD = "flower-test-password-0123"
# Two pairs, as compose configures it (people + Prometheus): both must work.
BASIC_AUTH = f"{USER}:{PASSWORD},metrics:another-password-4567"
RECIPIENT = "flower-check@example.com"
BODY = "Your one-time code is 918273; nobody at Flower should read it."
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
SCREENSHOT = ROOT / "test-artifacts" / "flower-task.png"
BROKER_SCREENSHOT = ROOT / "test-artifacts" / "flower-broker.png"
# Typed into Flower's send-task by an operator: it travels in the message itself.
SENDER_RECIPIENT = "flower-typed@example.com"
SENDER_BODY = "Your reset code is 5550123; Flower must not show it."


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    for key, value in changes.items():
        if value is not None:
            env[key] = value
    return env


def _flower_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "neoforge.cli", "flower", f"--port={port}", "--address=127.0.0.1", *extra]


def _get(url: str, credentials: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on PORT, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


@pytest.fixture(scope="module")
def flower_worker(tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> Iterator[str]:
    """``celery -A tasks worker`` (events on, from celeryconfig) under a unique name."""
    hostname = f"flower-{os.getpid()}@neoforge-tests"
    log = tmp_path_factory.mktemp("flower-worker") / "worker.log"
    process = celery_cli(
        "worker", "--loglevel", "INFO", "--pool", "solo", "--hostname", hostname, env=environment, log=log
    )
    yield hostname
    stop(process)
    assert "@example.com" not in log.read_text()


@pytest.fixture(scope="module")
def flower(
    tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str], flower_worker: str
) -> Iterator[str]:
    """``neoforge flower`` with credentials, once it sees the worker online; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    process = start(
        _flower_command(port), env=_env(**environment, FLOWER_BASIC_AUTH=BASIC_AUTH), log=log, cwd=ROOT
    )
    try:
        wait_until(lambda: _get(f"{url}/healthcheck")[0] == 200, 30, "Flower")

        def worker_online() -> bool:
            status, body = _get(f"{url}/api/workers?status=1", f"{USER}:{PASSWORD}")
            return status == 200 and json.loads(body).get(flower_worker) is True

        # Tasks reach Flower only as events: it must be listening before an email is sent.
        wait_until(worker_online, 30, f"worker {flower_worker} in Flower", interval=0.2)
        # Workers send task events only once Flower has turned them on (every 5 s):
        # until a probe email shows up in Flower, it has not.
        wait_until(lambda: _probe_seen(url), 60, "task events turned on by Flower", interval=0)
        yield url
    finally:
        stop(process)
    text = log.read_text()
    assert PASSWORD not in text
    assert "@example.com" not in text


def _probe_seen(url: str) -> bool:
    from tasks import send_email

    probe = send_email.delay(to=["probe@example.com"], subject="Flower probe", text="probe").id
    wait_for_status(probe, {"sent"}, timeout=30)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if _get(f"{url}/api/task/info/{probe}", f"{USER}:{PASSWORD}")[0] == 200:
            return True
        time.sleep(0.2)
    return False


def _refused(auth: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _flower_command(free_port(), *extra), env=_env(FLOWER_BASIC_AUTH=auth),
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "reason"),
    [(None, "is not set"), ("", "is not set"), (f"{USER}:short-pass", "shorter than 12"),
     (f"{USER}:{PASSWORD},:no-user-password-1", "pair 2"), ("justaname", "not user:password")],
)  # fmt: skip
def test_refuses_to_start_without_valid_credentials(value: str | None, reason: str) -> None:
    refused = _refused(value)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert "FLOWER_BASIC_AUTH" in line and reason in line
    assert "short-pass" not in line and PASSWORD not in line


def test_refuses_credentials_on_the_command_line() -> None:
    refused = _refused(BASIC_AUTH, f"--basic-auth={USER}:{PASSWORD}")
    assert refused.returncode == 2
    assert "FLOWER_BASIC_AUTH" in refused.stderr


def test_local_only_runs_without_auth_on_loopback_only(tmp_path: Path, environment: dict[str, str]) -> None:
    port = free_port()
    log = tmp_path / "flower.log"
    # Both ways of asking for every interface lose to --local-only.
    command = [sys.executable, "-m", "neoforge.cli", "flower", "--local-only", f"--port={port}"]
    command.append("--address=0.0.0.0")
    process = start(command, env=_env(**environment, FLOWER_ADDRESS="0.0.0.0"), log=log, cwd=ROOT)
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthcheck")[0] == 200, 30, "Flower")
        assert _listening_addresses(port) == {"127.0.0.1"}
        assert _get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        stop(process)
    assert "listening on 127.0.0.1 only, WITHOUT auth" in log.read_text()


@pytest.mark.parametrize("path", ["/", "/tasks", "/api/workers"])
def test_pages_need_the_right_credentials(flower: str, path: str) -> None:
    assert _get(flower + path)[0] == 401
    assert _get(flower + path, f"{USER}:wrong-password-0000")[0] == 401
    assert _get(flower + path, f"intruder:{PASSWORD}")[0] == 401
    assert _get(flower + path, f"{USER}:{PASSWORD}")[0] == 200
    assert _get(flower + path, "metrics:another-password-4567")[0] == 200


def test_browser_sees_the_task_but_not_the_email(flower: str, flower_worker: str) -> None:
    from tasks import send_email

    email_id = send_email.delay(to=[RECIPIENT], subject="Flower check", text=BODY).id
    wait_for_status(email_id, {"sent"}, timeout=30)

    def flower_saw_success() -> bool:
        status, body = _get(f"{flower}/api/task/info/{email_id}", f"{USER}:{PASSWORD}")
        return status == 200 and json.loads(body)["state"] == "SUCCESS"

    # The store says sent; Flower learns it from the worker's events a moment later.
    wait_until(flower_saw_success, 15, f"task {email_id} SUCCESS in Flower", interval=0.2)

    with _browser(flower) as page:
        page.goto("/tasks")
        # Rows arrive from /tasks/datatable after the page loads; DataTables ids them by uuid.
        row = page.locator(f'#tasks-table tr[id="{email_id}"]')
        row.wait_for(state="visible")
        assert "SUCCESS" in row.inner_text()
        _assert_no_content(page.content())

        row.locator(f'a[href$="/task/{email_id}"]').click()
        page.wait_for_url(f"**/task/{email_id}")
        text = page.locator("body").inner_text()
        assert email_id in text
        assert page.locator(".badge", has_text="SUCCESS").count() == 1
        assert flower_worker in text
        _assert_no_content(page.content())

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
    assert SCREENSHOT.stat().st_size > 0


@contextlib.contextmanager
def _browser(flower: str) -> Iterator[Page]:
    """A page of headless Chromium, logged in to Flower."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                base_url=flower,
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1280, "height": 800},
            )
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def _assert_no_content(html: str, secrets: tuple[str, ...] = (RECIPIENT, BODY, "918273")) -> None:
    # Flower sees the email id and the outcome: no address, no body in args, kwargs or result.
    for secret in secrets:
        assert secret not in html, f"Flower shows {secret!r}"


def _post(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


def _flower_state(flower: str, task_id: str) -> str | None:
    status, body = _get(f"{flower}/api/task/info/{task_id}", f"{USER}:{PASSWORD}")
    return str(json.loads(body)["state"]) if status == 200 else None


def test_broker_page_shows_every_queue_and_its_length(flower: str) -> None:
    # Flower lists the queues its workers consume: have it ask them now.
    assert _get(f"{flower}/api/workers?refresh=1", f"{USER}:{PASSWORD}")[0] == 200
    with _browser(flower) as page:
        response = page.goto("/broker")
        BROKER_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=BROKER_SCREENSHOT, full_page=True)
        assert response is not None and response.status == 200, page.locator("body").inner_text()
        lengths = {}
        for row in page.locator("#queue-table tbody tr").all():
            cells = row.locator("td").all_inner_texts()
            lengths[cells[0].strip()] = cells[1].strip()
    assert {"transactional", "bulk", "celery"} <= lengths.keys(), lengths
    for queue in ("transactional", "bulk", "celery"):
        assert lengths[queue].isdigit(), lengths


@pytest.mark.parametrize("endpoint", ["send-task", "async-apply"])
def test_flower_api_sends_an_email(flower: str, endpoint: str, api: Any, smtp_server: SmtpServer) -> None:
    subject = f"through Flower's {endpoint}"
    email = {"to": ["flower-api@example.com"], "subject": subject, "text": "sent by an operator"}
    status, body = _post(f"{flower}/api/task/{endpoint}/neoforge.send_email", {"kwargs": email})
    assert status == 200, body
    email_id = body["task-id"]
    wait_for_status(email_id, {"sent"}, timeout=30)
    response = api.get(f"/emails/{email_id}", headers=AUTH)
    assert response.status_code == 200 and response.json()["status"] == "sent"
    assert len(smtp_server.handler.by_subject(subject)) == 1


def test_flower_send_task_shows_the_outcome_but_not_the_email(
    flower: str, api: Any, redis_client: redis.Redis
) -> None:
    """Flower's send-task puts address and body into the message; nothing downstream shows them."""
    email = {"to": [SENDER_RECIPIENT], "subject": "typed into Flower", "text": SENDER_BODY}
    status, body = _post(f"{flower}/api/task/send-task/neoforge.send_email", {"kwargs": email})
    assert status == 200, body
    email_id = body["task-id"]
    # Content first: whatever the outcome, Flower must not show what went in.
    ended = {"SUCCESS", "FAILURE"}
    wait_until(lambda: _flower_state(flower, email_id) in ended, 30, f"task {email_id} ended in Flower")
    secrets = (SENDER_RECIPIENT, SENDER_BODY, "5550123")

    for path in ("/api/tasks", f"/api/task/info/{email_id}", f"/api/task/result/{email_id}"):
        status, raw = _get(flower + path, f"{USER}:{PASSWORD}")
        assert status == 200, path
        _assert_no_content(raw.decode(), secrets)
    meta = redis_client.get(f"celery-task-meta-{email_id}")
    assert meta is not None
    _assert_no_content(meta, secrets)

    with _browser(flower) as page:
        page.goto("/tasks")
        page.locator(f'#tasks-table tr[id="{email_id}"]').wait_for(state="visible")
        _assert_no_content(page.content(), secrets)

        page.goto("/broker")
        _assert_no_content(page.content(), secrets)

        page.goto(f"/task/{email_id}")
        _assert_no_content(page.content(), secrets)
        # The outcome is there: the task succeeded and its result says the email was sent.
        assert page.locator(".badge", has_text="SUCCESS").count() == 1
        label = page.locator("dt", has_text=re.compile(r"^\s*Result\s*$"))
        assert "sent" in page.locator("div.detail-row", has=label).inner_text()
    assert wait_for_status(email_id, {"sent"}, timeout=5)["status"] == "sent"
    response = api.get(f"/emails/{email_id}", headers=AUTH)
    assert response.status_code == 200 and response.json()["status"] == "sent"
