"""The operator console at /console, as an operator meets it: headless Chromium against the real API.

Real processes only: ``uvicorn neoforge.main:app`` as a subprocess, Celery's test worker delivering
to a real SMTP server, Redis; the browser is the Debian Chromium driven by Playwright.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

import tasks
from neoforge.console.passwords import hash_password, verify_password
from neoforge.processes import free_port, start, stop, wait_until
from tests.conftest import API_KEY, ROOT, wait_for_status
from tests.smtp_server import SmtpServer
from tests.test_flower import CHROMIUM, CHROMIUM_ARGS

OPERATOR, VIEWER = ("alice", "alice-password-0123"), ("bob", "bob-password-4567")
SEARCHED = "ada.console@example.com"
OTHERS = ("grace.console@example.com", "linus.console@example.com")
ARTIFACTS = ROOT / "test-artifacts"
_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str], worker: Any
) -> Iterator[str]:
    """The real API (uvicorn) with two console accounts; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("console") / "api.log"
    users = (
        f"{OPERATOR[0]}:operator:{hash_password(OPERATOR[1])},{VIEWER[0]}:viewer:{hash_password(VIEWER[1])}"
    )
    env = {**environment, "CONSOLE_USERS": users, "CONSOLE_SECRET": "console-test-secret-0123456789",
           "CONSOLE_SIGNIN_LIMIT": "3"}  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "neoforge.main:app", "--host", "127.0.0.1", f"--port={port}"]
    process = start(command, env={**os.environ, **env}, log=log, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 30, "API")
        yield url
    finally:
        stop(process)
    text = log.read_text()
    assert not _ADDRESS.search(text), "the API's log carries an address"
    assert OPERATOR[1] not in text and API_KEY not in text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, console: str) -> Iterator[BrowserContext]:
    opened = browser.new_context(base_url=console, viewport={"width": 1280, "height": 860})
    opened.set_default_timeout(15_000)
    yield opened
    opened.close()


def _sign_in(context: BrowserContext, name: str, password: str) -> Page:
    page = context.new_page()
    page.goto("/console/login")
    page.fill("#account input[name=name]", name)
    page.fill("#account input[name=password]", password)
    page.click("#account button")
    page.wait_for_url("**/console")
    return page


def _failed_email(
    smtp_server: SmtpServer, to: str, subject: str = "Your reset code", at_rcpt: bool = False
) -> str:
    if at_rcpt:
        smtp_server.handler.rcpt_replies[to] = "550 5.1.1 <ada.console@example.com>: no such mailbox"
    else:
        smtp_server.handler.data_replies.append("554 5.7.1 Message refused by policy")
    email_id = tasks.send_email.delay(to=[to], subject=subject, text="Code 4242, for Ada only.").id
    wait_for_status(email_id, {"failed"})
    return str(email_id)


def _addresses(html: str) -> set[str]:
    return set(_ADDRESS.findall(html))


def _csrf(page: Page) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_operator_finds_an_email_by_recipient_and_requeues_it(
    context: BrowserContext, smtp_server: SmtpServer
) -> None:
    failed = _failed_email(smtp_server, SEARCHED)
    for other in OTHERS:
        wait_for_status(tasks.send_email.delay(to=[other], subject="Hello", text="hi").id, {"sent"})
    page = _sign_in(context, *OPERATOR)
    assert page.locator("#dead-letters").inner_text() == "1"
    assert "alice" in page.locator("header").inner_text()

    page.goto("/console/emails")
    page.fill("#find input[name=address]", SEARCHED)
    page.click("#find button")
    rows = page.locator("table.emails tbody tr")
    assert rows.count() == 1 and failed in rows.inner_text() and "failed" in rows.inner_text()
    assert _addresses(page.content()) == {SEARCHED}  # the search box; nothing else

    page.click(f"a[href='/console/emails/{failed}']")
    page.wait_for_url(f"**/console/emails/{failed}")
    timeline = page.locator("#timeline").inner_text()
    assert "554" in timeline and "smtp_5xx" in timeline and "failed" in timeline
    assert page.locator("#subject").inner_text() == "Your reset code"
    assert "Code 4242" in page.locator("pre.text").inner_text()
    assert _addresses(page.content()) == set()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "console-email.png", full_page=True)

    page.click("#requeue")
    page.wait_for_url(f"**/console/emails/{failed}")

    def shows_sent() -> bool:
        page.reload()
        return page.locator("#status").inner_text() == "sent"

    wait_until(shows_sent, 20, "the requeued email shown as sent", interval=0.3)
    assert len(smtp_server.handler.by_subject("Your reset code")) == 1
    timeline = page.locator("#timeline").inner_text()
    assert "requeued" in timeline and "sent" in timeline
    assert page.locator("#requeue").count() == 0  # sent: nothing to requeue, content gone
    assert "Not kept" in page.locator("main").inner_text()

    page.goto("/console/emails?status=sent")
    assert page.locator("table.emails tbody tr").count() == 3  # the two others and the requeued one
    page.goto("/console/emails?status=sent&priority=bulk")
    assert "No email here" in page.locator("table.emails").inner_text()
    page.goto(f"/console/emails?status=sent&since={datetime.now(UTC) + timedelta(minutes=2):%Y-%m-%dT%H:%M}")
    assert "No email here" in page.locator("table.emails").inner_text()
    for path in ("/console", "/console/emails", "/console/emails?status=sent", "/console/dead-letters",
                 "/console/batches"):  # fmt: skip
        page.goto(path)
        assert _addresses(page.content()) == set(), path
    page.goto("/console")
    page.screenshot(path=ARTIFACTS / "console-overview.png", full_page=True)


def test_viewer_reads_but_cannot_requeue(context: BrowserContext, smtp_server: SmtpServer) -> None:
    failed = _failed_email(smtp_server, SEARCHED, at_rcpt=True)
    page = _sign_in(context, *VIEWER)
    assert "viewer" in page.locator("header .role").inner_text()
    page.goto(f"/console/emails/{failed}")
    assert page.locator("#status").inner_text() == "failed"
    outcome = page.locator("table.outcomes tbody").inner_text()
    assert "a***@example.com" in outcome and "rejected" in outcome and "550" in outcome
    assert _addresses(page.content()) == set()  # the server's reply named the address: masked
    assert page.locator("#requeue").count() == 0 and page.locator("#delete").count() == 0
    page.goto("/console/dead-letters")
    assert "recipient_rejected" in page.locator("table.classes").inner_text()
    assert page.locator("button.requeue-class").count() == 0

    refused = context.request.post(f"/console/emails/{failed}/requeue", form={"csrf": _csrf(page)})
    assert refused.status == 403 and "operators only" in refused.text()
    assert refused.headers["content-type"].startswith("text/html")
    refused = context.request.post(
        "/console/dead-letters/requeue", form={"csrf": _csrf(page), "error_class": "recipient_rejected"}
    )
    assert refused.status == 403
    assert wait_for_status(failed, {"failed"}, timeout=1)["attempts"] == 1


def test_forms_without_the_sessions_csrf_token_are_refused(
    browser: Browser, context: BrowserContext, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    failed = _failed_email(smtp_server, SEARCHED)
    page = _sign_in(context, *OPERATOR)
    page.goto(f"/console/emails/{failed}")
    url = f"/console/emails/{failed}/requeue"
    assert context.request.post(url, form={}).status == 403
    assert context.request.post(url, form={"csrf": "forged-token"}).status == 403
    from_elsewhere = context.request.post(
        url, form={"csrf": _csrf(page)}, headers={"Origin": "https://evil.example"}
    )
    assert from_elsewhere.status == 403
    # A token from another session (another browser) is no good either.
    other = browser.new_context(base_url=page.url.split("/console")[0])
    other_page = other.new_page()
    other_page.goto("/console/login")
    assert context.request.post(url, form={"csrf": _csrf(other_page)}).status == 403
    other.close()
    assert redis_client.hget(f"neoforge:email:{failed}", "status") == "failed"
    # The right token works.
    done = context.request.post(url, form={"csrf": _csrf(page)}, max_redirects=0)
    assert done.status == 303
    wait_for_status(failed, {"sent"})


def test_sign_in_cookie_and_limits(context: BrowserContext, console: str) -> None:
    page = context.new_page()
    page.goto("/console/emails")
    page.wait_for_url("**/console/login")
    page.fill("#apikey input[name=key]", API_KEY)
    page.click("#apikey button")
    page.wait_for_url("**/console")
    assert "operator" in page.locator("header .role").inner_text()
    [cookie] = [c for c in context.cookies() if c["name"] == "neoforge_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert API_KEY not in cookie["value"]
    response = page.goto("/console")
    assert response is not None
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    # Behind a TLS proxy (X-Forwarded-Proto from a trusted address) the cookie is Secure.
    request = urllib.request.Request(f"{console}/console/login", headers={"X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert "secure" in answer.headers["set-cookie"].lower()
    page.click("header button")  # sign out
    page.wait_for_url("**/console/login")

    for attempt in range(4):
        page.fill("#account input[name=name]", OPERATOR[0])
        page.fill("#account input[name=password]", f"wrong-password-{attempt}")
        page.click("#account button")
        expected = "Wrong name" if attempt < 3 else "Too many failed sign-ins"
        assert expected in page.locator(".error").inner_text()
    page.fill("#account input[name=name]", OPERATOR[0])
    page.fill("#account input[name=password]", OPERATOR[1])
    page.click("#account button")
    assert "Too many failed sign-ins" in page.locator(".error").inner_text()  # even the right password


class _Pixel(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Pixel.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_preview_is_sandboxed_and_an_unsent_email_can_be_cancelled(context: BrowserContext) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Pixel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pixel = f"http://127.0.0.1:{server.server_address[1]}"
    html = (f'<meta http-equiv="Refresh" content="0; url={pixel}/refresh"><h1 id="hello">Hello Ada</h1>'
            f'<img src="{pixel}/open.png"><script>fetch("{pixel}/script")</script><p>Write to {SEARCHED}</p>'
            f'<div style="background: url({pixel}/background.png)">styled</div>')  # fmt: skip
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    email_id = tasks.send_email.apply_async(
        kwargs={
            "to": [SEARCHED],
            "subject": "Preview me",
            "html": html,
            "text": "Hello Ada",
            "send_at": later,
        }
    ).id
    try:
        page = _sign_in(context, *OPERATOR)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"/console/emails/{email_id}")
        assert page.locator("#status").inner_text() == "scheduled"
        frame = page.frame_locator("iframe.preview")
        assert frame.locator("#hello").inner_text() == "Hello Ada"
        loaded = page.frame(url=re.compile(r"/preview$"))
        assert loaded is not None
        loaded.wait_for_load_state("load")  # images fetched or refused by now
        assert _Pixel.hits == []  # no image, style or script reached out
        assert "a***@example.com" in frame.locator("p").inner_text()  # addresses masked in the body too
        preview = context.request.get(f"/console/emails/{email_id}/preview")
        policy = preview.headers["content-security-policy"]
        assert policy.startswith("sandbox;") and "default-src 'none'" in policy and "img-src data:" in policy
        assert page.locator("iframe.preview").get_attribute("sandbox") == ""
        assert _addresses(page.content()) == set()
        page.click("#cancel")
        page.wait_for_url(f"**/console/emails/{email_id}")
        assert page.locator("#status").inner_text() == "cancelled"
        assert page.locator("iframe.preview").count() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _Pixel.hits == []


def test_overview_chart_batches_and_dead_letters_on_a_phone(
    browser: Browser, console: str, smtp_server: SmtpServer
) -> None:
    from neoforge.bulk import queue_bulk

    smtp_server.handler.data_replies.extend(["451 4.3.0 try again later", "554 5.7.1 refused"])
    batch_id, ids = queue_bulk({"template": "new_account", "subject": "Welcome", "recipients": [
        {"to": address, "context": {"username": "x", "link": "https://example.com"}} for address in
        (SEARCHED, *OTHERS)]})  # fmt: skip
    for email_id in ids:
        wait_for_status(email_id, {"sent", "failed"})
    phone = browser.new_context(base_url=console, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = _sign_in(phone, *OPERATOR)
        totals = page.locator("#totals").inner_text()
        assert "sent 2" in totals and "failed 1" in totals and "retried 1" in totals
        assert page.locator("svg.chart polyline").count() == 3
        # The figures refresh in place.
        page.locator("#overview[data-refreshed]").wait_for(state="attached", timeout=10_000)

        page.goto("/console/batches")
        page.click(f"a[href='/console/batches/{batch_id}']")
        assert page.locator("svg.progress rect").count() == 2  # sent and failed
        counts = page.locator("#counts").inner_text()
        assert "sent\t2" in counts and "failed\t1" in counts
        page.screenshot(path=ARTIFACTS / "console-batch-phone.png", full_page=True)

        page.goto("/console/dead-letters")
        assert "smtp_5xx" in page.locator("table.classes").inner_text()
        page.check("table.emails tbody input[name=id]")
        page.click("#requeue-selected")
        assert page.locator("#requeued").inner_text() == "1 email(s) requeued."
        assert all(_addresses(html) == set() for html in [page.content()])
    finally:
        phone.close()
    for email_id in ids:  # the requeued one too
        wait_for_status(email_id, {"sent"})


def test_hash_password_command_makes_a_working_entry(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "neoforge.cli", "console-hash-password", "--user=carol", "--role=viewer"],
        input="carol-password-8901\ncarol-password-8901\n", capture_output=True, text=True, timeout=30,
        cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = done.stdout.strip().splitlines()[-1]
    name, role, hashed = entry.split(":", 2)
    assert (name, role) == ("carol", "viewer") and "carol-password" not in entry
    assert verify_password("carol-password-8901", hashed) and not verify_password(
        "carol-password-8900", hashed
    )
    short = subprocess.run(
        [sys.executable, "-m", "neoforge.cli", "console-hash-password"], input="short\nshort\n",
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )  # fmt: skip
    assert short.returncode != 0 and "12 characters" in short.stderr


def _csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_sessions_follow_the_settings_and_the_redis_kept_key(
    api: Any, settings_env: Any, redis_client: redis.Redis
) -> None:
    """Without CONSOLE_SECRET the key lives in Redis; a new password or role applies to open sessions."""
    settings_env(CONSOLE_USERS=f"{OPERATOR[0]}:operator:{hash_password(OPERATOR[1])}")
    login = api.get("/console/login")
    signed = api.post("/console/login", data={"csrf": _csrf_of(login.text), "name": OPERATOR[0],
                      "password": OPERATOR[1]}, follow_redirects=False)  # fmt: skip
    assert signed.status_code == 303 and redis_client.exists("neoforge:console:secret")
    assert "operator" in api.get("/console").text

    settings_env(CONSOLE_USERS=f"{OPERATOR[0]}:operator:{hash_password('a-new-password-for-alice')}")
    assert api.get("/console", follow_redirects=False).status_code == 303  # another password: signed out

    redis_client.delete("neoforge:console:secret")  # a new key: every session signed with the old one ends
    login = api.get("/console/login")
    settings_env(CONSOLE_API_KEY_ROLE="viewer")
    signed = api.post(
        "/console/login", data={"csrf": _csrf_of(login.text), "key": API_KEY}, follow_redirects=False
    )
    assert signed.status_code == 303
    page = api.get("/console")
    assert '<span class="role">viewer</span>' in page.text
    redis_client.delete("neoforge:console:secret")
    assert api.get("/console", follow_redirects=False).headers["location"] == "/console/login"
