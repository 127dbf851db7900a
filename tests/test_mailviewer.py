"""The dev mail viewer: caught mail in Chromium, live, with the HTML unable to run code or call home.

Real parts only: the catcher (aiosmtpd) receives over SMTP from smtplib, the viewer serves the
folder, headless Chromium (the Debian package, driven by Playwright) is the developer's browser,
and a small HTTP server stands in for the internet that a tracking pixel or a script would call.
"""

from __future__ import annotations

import json
import smtplib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from neoforge.catcher import MailCatcher
from neoforge.mailviewer import MailViewer
from neoforge.processes import free_port
from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCREENSHOT = ROOT / "test-artifacts" / "mail-viewer.png"
ATTACHMENT = bytes(range(256)) * 8
ATTACHMENT_NAME = "report ü 2026.bin"


class _Tracker(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tracker() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tracker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Tracker.hits
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    folder = tmp_path_factory.mktemp("caught")
    catcher = MailCatcher(folder, free_port())
    catcher.start()
    viewer = MailViewer(folder, 0)
    viewer.start()
    yield catcher.port, viewer.url
    viewer.stop()
    catcher.stop()


@pytest.fixture(scope="module")
def page(stack: tuple[int, str]) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=stack[1], viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto("/")
            yield page
        finally:
            browser.close()


def _send(port: int, message: EmailMessage | bytes, to: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        if isinstance(message, bytes):
            smtp.sendmail("app@example.com", to, message)
        else:
            smtp.send_message(message, to_addrs=to)


def test_new_mail_appears_and_every_view_works(page: Page, stack: tuple[int, str], tracker: Any) -> None:
    track_url, hits = tracker
    expect(page.locator("#empty")).to_be_visible()
    message = EmailMessage()
    message["From"] = "NeoForge <app@example.com>"
    message["To"] = "dev-viewer@example.com"
    message["Subject"] = "Welcome to the viewer"
    message.set_content("Plain words for plain readers.")
    message.add_alternative(
        "<html><body><p id='greet' style='color: teal'>Hello in HTML</p>"
        f"<img src='{track_url}/pixel.png'>"
        f"<script>document.body.insertAdjacentHTML('beforeend', '<p id=ran>ran</p>');"
        f"fetch('{track_url}/script')</script>"
        f"<link rel='stylesheet' href='{track_url}/style.css'></body></html>",
        subtype="html",
    )
    message.add_attachment(
        ATTACHMENT, maintype="application", subtype="octet-stream", filename=ATTACHMENT_NAME
    )
    # The page is already open: the message must show up without a reload.
    _send(stack[0], message, ["dev-viewer@example.com", "hidden-copy@example.com"])
    row = page.locator("#messages tbody tr", has_text="Welcome to the viewer")
    expect(row).to_be_visible()
    expect(row).to_contain_text("NeoForge <app@example.com>")
    expect(row).to_contain_text("hidden-copy@example.com")  # the envelope shows Bcc recipients

    row.click()
    frame = page.frame_locator("#html-frame")
    expect(frame.locator("#greet")).to_have_text("Hello in HTML")
    # Neither the script nor the remote image, script or style reached out.
    assert frame.locator("#ran").count() == 0
    assert hits == [], hits
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)

    page.click("#tabs button[data-tab=text]")
    expect(page.locator("#text")).to_have_text("Plain words for plain readers.\n")
    page.click("#tabs button[data-tab=headers]")
    expect(page.locator("#headers")).to_contain_text("multipart/mixed")
    page.click("#tabs button[data-tab=raw]")
    expect(page.locator("#raw")).to_contain_text("MIME-Version: 1.0")
    expect(page.locator("#raw")).to_contain_text("<script>")  # as text, never rendered
    page.click("#tabs button[data-tab=attachments]")
    link = page.locator("#attachments a", has_text=ATTACHMENT_NAME)
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == ATTACHMENT_NAME
    assert Path(download.value.path()).read_bytes() == ATTACHMENT
    expect(page.locator("#defects")).to_be_hidden()
    assert hits == [], hits


def test_mime_defects_are_flagged(page: Page, stack: tuple[int, str]) -> None:
    broken = (
        b"From: app@example.com\r\nTo: dev-viewer@example.com\r\nSubject: Broken container\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative\r\n\r\n"
        b"no boundary parameter, so no parts\r\n"
    )
    _send(stack[0], broken, ["dev-viewer@example.com"])
    row = page.locator("#messages tbody tr", has_text="Broken container")
    expect(row.locator(".badge.defect")).to_be_visible()
    row.click()
    expect(page.locator("#defects")).to_be_visible()
    expect(page.locator("#defects")).to_contain_text("NoBoundaryInMultipartDefect")


def test_html_is_served_with_a_policy_that_blocks_scripts_and_remote_content(stack: tuple[int, str]) -> None:
    port, url = stack
    message = EmailMessage()
    message["Subject"] = "Policy check"
    message.set_content("<p>hi</p>", subtype="html")
    _send(port, message, ["dev-viewer@example.com"])
    with urllib.request.urlopen(url, timeout=5) as index:
        assert "script-src 'self'" in index.headers["Content-Security-Policy"]
    with urllib.request.urlopen(url + "api/messages", timeout=5) as listing:
        [row] = [row for row in json.loads(listing.read()) if row["subject"] == "Policy check"]
    with urllib.request.urlopen(f"{url}messages/{row['id']}/html", timeout=5) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script" not in policy
    for bad in ("../000001", "000001/../../etc", "1"):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{url}api/messages/{bad}", timeout=5)
