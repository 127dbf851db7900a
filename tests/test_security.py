"""Hardening: hostile input, credentials, personal data at rest, staging safety."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from neoforge.processes import stop
from tests.conftest import AUTH, ROOT, RedisServer, celery_cli, wait_for_status
from tests.smtp_server import SmtpServer


def _email(**extra: Any) -> dict[str, Any]:
    return {"to": ["s@example.com"], "subject": "security", "text": "x", **extra}


def test_oversize_body_is_refused_before_it_is_read(api: Any, settings_env: Any) -> None:
    settings_env(API_MAX_REQUEST_BYTES="4096")
    big = json.dumps(_email(text="x" * 10_000)).encode()
    declared = api.post("/emails", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert declared.status_code == 413

    def chunks() -> Any:  # no Content-Length: counted as it streams in
        for _ in range(10):
            yield b" " * 1000
        yield big

    streamed = api.post("/emails", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert api.post("/emails", json=_email(), headers=AUTH).status_code == 202


def test_recipient_count_is_limited(api: Any) -> None:
    many = [f"r{i}@example.com" for i in range(51)]
    response = api.post("/emails", json=_email(to=many), headers=AUTH)
    assert response.status_code == 422
    assert "recipients" in response.text


def test_nul_in_headers_and_addresses_is_refused(api: Any) -> None:
    for bad in (
        _email(subject="a\x00b"),
        _email(headers={"X-Tag": "a\x00b"}),
        _email(reply_to=["a\x00@example.com"]),
    ):
        assert api.post("/emails", json=bad, headers=AUTH).status_code == 422


def test_template_names_cannot_leave_the_folder(api: Any, settings_env: Any, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", folder)
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    (folder / "evil.txt").symlink_to(tmp_path / "secret.txt")
    settings_env(TEMPLATES_DIR=str(folder))
    for name in ("evil", "../secret", "/etc/passwd", "_base", "test_email.html"):
        response = api.post("/emails", json={**_email(text=None), "template": name}, headers=AUTH)
        assert response.status_code == 422, name
    ok = api.post(
        "/emails",
        json={**_email(text=None), "template": "test_email", "context": {"name": "x"}},
        headers=AUTH,
    )
    assert ok.status_code == 202


def test_rate_limit_per_key(api: Any, settings_env: Any) -> None:
    settings_env(API_RATE_LIMIT_REQUESTS="3", API_RATE_LIMIT_RECIPIENTS="4")
    # Writes count against the key's requests (reads have their own budget: test_read_limits.py).
    codes = [api.delete("/emails/x", headers=AUTH).status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    limited = api.delete("/emails/x", headers=AUTH)
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Another key has its own allowance; recipients are counted too.
    other = {"Authorization": "Bearer second-key-abcdef"}
    assert (
        api.post(
            "/emails", json=_email(to=["a@example.com", "b@example.com", "c@example.com"]), headers=other
        ).status_code
        == 202
    )
    too_many = api.post("/emails", json=_email(to=["d@example.com", "e@example.com"]), headers=other)
    assert too_many.status_code == 429


@pytest.mark.usefixtures("worker")
def test_password_never_sent_without_tls(smtp_server: SmtpServer, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(SMTP_USER="mailer", SMTP_PASSWORD="s3cret-password", SMTP_STARTTLS="false")
    email_id = send_email.delay(**_email(subject="plain auth")).id
    # A setup problem: sending pauses and the email waits (no attempt counted), never a dead letter.
    record = wait_for_status(email_id, {"retrying"})
    assert record["error_class"] == "tls"
    assert "without TLS" in record["last_error"]
    assert record["attempts"] == 0
    assert smtp_server.handler.by_subject("plain auth") == []


def test_secure_defaults() -> None:
    from neoforge.settings import Settings

    defaults = Settings.model_fields
    assert defaults["smtp_starttls"].default is True
    assert defaults["smtp_validate_certs"].default is True
    assert defaults["smtp_allow_plaintext_auth"].default is False
    assert defaults["api_keys"].default == []


def test_rediss_checks_certificates() -> None:
    script = (
        "import celeryconfig, ssl; print(celeryconfig.broker_use_ssl['ssl_cert_reqs'] == ssl.CERT_REQUIRED, "
        "celeryconfig.redis_backend_use_ssl['ssl_cert_reqs'] == ssl.CERT_REQUIRED)"
    )
    env = {**os.environ, "REDIS_URL": "rediss://:pw@redis.example.com:6380/0"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["True", "True"]


def test_worker_against_a_redis_with_a_password(
    tmp_path: Path, environment: dict[str, str], smtp_server: SmtpServer
) -> None:
    server = RedisServer(tmp_path / "redis-auth", password="a-long-redis-password")
    server.start()
    url = f"redis://:a-long-redis-password@127.0.0.1:{server.port}/0"
    queue = f"auth-{uuid.uuid4().hex[:6]}"
    worker = celery_cli(
        "worker", "-Q", queue, "-c", "1", env={**environment, "REDIS_URL": url}, log=tmp_path / "worker.log"
    )
    try:
        script = (
            "from tasks import send_email; print(send_email.apply_async(kwargs={'to': ['p@example.com'], "
            f"'subject': 'with password', 'text': 'x'}}, queue='{queue}').id)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "REDIS_URL": url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        email_id = out.stdout.strip()
        client = redis.Redis.from_url(url, decode_responses=True)
        from neoforge.processes import wait_until

        wait_until(lambda: client.hget(f"neoforge:email:{email_id}", "status") == "sent", 60, "sent")
        client.close()
        wrong = url.replace("a-long-redis-password", "wrong-password")
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "neoforge.cli",
                "send",
                "--to",
                "p@example.com",
                "--subject",
                "s",
                "--text",
                "x",
            ],
            env={**os.environ, "REDIS_URL": wrong},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
        assert "wrong-password" not in refused.stderr and "cannot reach Redis" in refused.stderr
    finally:
        stop(worker)
        server.stop()
    assert "a-long-redis-password" not in (tmp_path / "worker.log").read_text()


def test_delete_purges_content_and_cancels_unsent(api: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email

    parked = send_email.apply_async(kwargs=_email(subject="never"), queue="parked").id
    response = api.delete(f"/emails/{parked}", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["purged_at"]
    assert redis_client.get(f"neoforge:email:{parked}:payload") is None
    assert api.delete("/emails/unknown-id", headers=AUTH).status_code == 404
    redis_client.delete("parked")


@pytest.mark.usefixtures("worker")
def test_cancelled_email_is_never_sent(api: Any, smtp_server: SmtpServer, redis_client: redis.Redis) -> None:
    from tasks import send_email

    result = send_email.apply_async(kwargs=_email(subject="cancelled"), queue="parked")
    api.delete(f"/emails/{result.id}", headers=AUTH)
    redis_client.delete("parked")
    send_email.apply_async((result.id,))  # a stray message for it still arrives
    wait_for_status(result.id, {"cancelled"})
    later = send_email.delay(**_email(subject="after")).id
    wait_for_status(later, {"sent"})
    assert smtp_server.handler.by_subject("cancelled") == []


@pytest.mark.usefixtures("worker")
def test_purge_by_address(api: Any, smtp_server: SmtpServer, redis_client: redis.Redis) -> None:
    from tasks import send_email

    smtp_server.handler.data_replies.extend(["550 5.1.1 no"] * 3)
    ids = [
        send_email.delay(**_email(to=[f"{who}@example.com"], subject=f"erase {who}")).id
        for who in ("erase", "erase", "keep")
    ]
    for email_id in ids:
        wait_for_status(email_id, {"failed"})  # failed emails keep their content, for requeue
    response = api.post("/emails/purge", json={"address": "ERASE@example.com"}, headers=AUTH)
    assert response.json() == {"purged": 2}
    assert redis_client.get(f"neoforge:email:{ids[0]}:payload") is None
    assert redis_client.get(f"neoforge:email:{ids[1]}:payload") is None
    assert redis_client.get(f"neoforge:email:{ids[2]}:payload") is not None


@pytest.mark.usefixtures("worker")
def test_staging_redirect_sends_nothing_elsewhere(smtp_server: SmtpServer, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(EMAIL_REDIRECT_TO="staging-inbox@example.com")
    email_id = send_email.delay(
        **_email(to=["real.user@example.com"], cc=["boss@example.com"], bcc=["audit@example.com"])
    ).id
    wait_for_status(email_id, {"sent"})
    assert [m.rcpt_tos for m in smtp_server.handler.messages] == [["staging-inbox@example.com"]]


@pytest.mark.usefixtures("worker")
def test_staging_allowed_domains(smtp_server: SmtpServer, settings_env: Any) -> None:
    from tasks import send_email

    settings_env(EMAIL_ALLOWED_DOMAINS="allowed.example.com")
    mixed = send_email.delay(**_email(to=["a@allowed.example.com", "b@other.example.com"])).id
    record = wait_for_status(mixed, {"sent"})
    assert [m.rcpt_tos for m in smtp_server.handler.messages] == [["a@allowed.example.com"]]
    assert [(o["address"], o["outcome"]) for o in record["outcomes"]] == [
        ("a***@allowed.example.com", "delivered"),
        ("b***@other.example.com", "held"),
    ]
    assert record["delivered"] == "some"
    outside = send_email.delay(**_email(to=["c@other.example.com"])).id
    assert wait_for_status(outside, {"failed"})["error_class"] == "not_allowed"
    assert len(smtp_server.handler.messages) == 1


@pytest.mark.usefixtures("worker")
def test_a_purged_dead_letter_cannot_be_requeued(api: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    smtp_server.handler.data_replies.append("550 5.1.1 no")
    email_id = send_email.delay(**_email(subject="purged dead letter")).id
    wait_for_status(email_id, {"failed"})
    assert api.delete(f"/emails/{email_id}", headers=AUTH).json()["status"] == "failed"
    assert api.post(f"/emails/{email_id}/requeue", headers=AUTH).status_code == 409
    assert smtp_server.handler.by_subject("purged dead letter") == []
