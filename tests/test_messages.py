"""Messages a person reads: every missing template variable, no pydantic prefixes, the CLI's status
as the API's JSON, one line naming REDIS_URL when Redis is out of reach, and /docs offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import Route, sync_playwright

from neoforge.processes import free_port, start, stop, wait_until
from tests.conftest import AUTH, ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def test_template_error_names_every_missing_variable(api: Any) -> None:
    response = api.post(
        "/emails",
        json={
            "to": ["a@example.com"],
            "subject": "s",
            "template": "reset_password",
            "context": {"username": "a"},
        },
        headers=AUTH,
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["msg"] == (
        "template 'reset_password' needs variables missing from the context: 'link', 'valid_hours'"
    )
    # A variable the template reads only through `| default(...)` is not reported.
    assert "product_name" not in error["msg"]


@pytest.mark.parametrize(
    "fields",
    [
        {"to": ["a@example.com"], "subject": "bad\r\nBcc: x@example.com", "text": "x"},
        {"to": ["a@example.com"], "subject": "s", "text": "x", "headers": {"From": "x@example.com"}},
        {"to": ["a@example.com"], "subject": "s"},
    ],
)
def test_api_validation_messages_have_no_pydantic_prefix(api: Any, fields: dict[str, Any]) -> None:
    response = api.post("/emails", json=fields, headers=AUTH)
    assert response.status_code == 422
    messages = [e["msg"] for e in response.json()["detail"]]
    assert messages and not any(m.startswith(("Value error", "Assertion failed")) for m in messages), messages


def test_cli_validation_message_has_no_pydantic_prefix(environment: dict[str, str]) -> None:
    result = _cli(
        "neoforge.cli", "send", "--to", "a@example.com", "--subject", "bad\nBcc: x@example.com", "--text", "",
        env=environment,
    )  # fmt: skip
    assert result.returncode != 0
    assert "subject: must not contain CR, LF" in result.stderr, result.stderr
    assert "Value error" not in result.stderr


def test_setting_error_has_no_pydantic_prefix(environment: dict[str, str]) -> None:
    bad = {**environment, "EMAIL_ALLOW_SPECIAL_DOMAINS": "not a domain!"}
    result = _cli("neoforge.cli", "status", "x", env=bad)
    assert result.returncode != 0
    expected = "invalid setting EMAIL_ALLOW_SPECIAL_DOMAINS: 'not a domain!' is not a domain name"
    assert expected in result.stderr, result.stderr
    assert "Value error" not in result.stderr


def test_status_cli_prints_exactly_the_api_json(api: Any, environment: dict[str, str]) -> None:
    queued = api.post(
        "/emails", json={"to": ["a@example.com"], "subject": "s", "text": "x"}, headers=AUTH
    ).json()
    from_api = api.get(f"/emails/{queued['id']}", headers=AUTH).json()
    result = _cli("neoforge.cli", "status", queued["id"], env=environment)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == from_api
    assert isinstance(json.loads(result.stdout)["recipients"], int)


@pytest.mark.parametrize(
    "command",
    [
        ["celery", "-A", "tasks", "worker", "--loglevel", "INFO"],
        ["uvicorn", "neoforge.main:app", "--host", "127.0.0.1", "--port", "0"],
    ],
)
def test_without_redis_one_line_names_redis_url(environment: dict[str, str], command: list[str]) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    result = _cli(*command, env={**environment, "REDIS_URL": nowhere}, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "Redis" in line or "redis" in line]
    assert len(lines) == 1, output
    assert "REDIS_URL" in lines[0] and nowhere in lines[0], output
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def served_api(tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> Any:
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    process = start(
        [sys.executable, "-m", "uvicorn", "neoforge.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **environment}, log=log, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(f"{base}/health"), 30, "the API")
        yield base
    finally:
        stop(process)


def _ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status) == 200


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")])
def test_docs_render_with_the_internet_cut_off(served_api: str, path: str, rendered: str) -> None:
    elsewhere: list[str] = []

    def only_ours(route: Route) -> None:
        if route.request.url.startswith(served_api):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.route("**/*", only_ours)
            page.goto(served_api + path)
            page.locator(rendered, has_text="NeoForge Mail").first.wait_for(state="visible")
            assert page.get_by_text("Queue an email").first.is_visible() or path == "/redoc"
            shot = ROOT / "test-artifacts" / f"api{path.replace('/', '-')}.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=shot)
        finally:
            browser.close()
    assert elsewhere == [], elsewhere
