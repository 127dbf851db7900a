"""The HTTP API against the real app, Redis, worker and SMTP server."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis

from neoforge.processes import wait_until
from tests.conftest import AUTH, no_email_left
from tests.smtp_server import SmtpServer


def _queue_lengths(client: redis.Redis) -> dict[str, int]:
    return {name: int(client.llen(name)) for name in ("transactional", "bulk")}


@pytest.mark.usefixtures("worker")
def test_status_transitions_through_the_api(
    api: Any, smtp_server: SmtpServer, redis_client: redis.Redis
) -> None:
    smtp_server.handler.data_replies.append("451 4.4.1 Later")
    smtp_server.handler.data_delay = 0.3
    response = api.post(
        "/emails", json={"to": ["t@example.com"], "subject": "via api", "text": "hi"}, headers=AUTH
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    email_id = body["id"]

    seen: list[str] = []

    def sent() -> bool:
        status = api.get(f"/emails/{email_id}", headers=AUTH).json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "sent"

    wait_until(sent, 20, "sent", interval=0.02)
    # Polling may miss the short-lived "queued", never the order.
    assert seen[-1] == "sent"
    assert "sending" in seen and "retrying" in seen
    expected = iter(["queued", "sending", "retrying", "sending", "sent"])
    assert all(status in expected for status in seen), seen  # a subsequence, in order

    record = api.get(f"/emails/{email_id}", headers=AUTH).json()
    assert record["attempts"] == 2
    assert record["sent_at"] and record["created_at"] <= record["updated_at"]
    assert [a["outcome"] for a in record["timeline"]] == ["retry", "sent"]
    assert record["timeline"][0]["smtp_code"] == 451
    # Celery's result backend has the task too, with no content in it.
    meta = redis_client.get(f"celery-task-meta-{email_id}")
    assert meta is not None and '"SUCCESS"' in meta and "t@example.com" not in meta


def test_queued_status_is_immediate(api: Any, redis_client: redis.Redis) -> None:
    from tasks import send_email

    # A queue no worker reads: the status must say queued, not Celery's PENDING.
    result = send_email.apply_async(
        kwargs={"to": ["q@example.com"], "subject": "wait", "text": "x"}, queue="parked"
    )
    record = api.get(f"/emails/{result.id}", headers=AUTH).json()
    assert record["status"] == "queued"
    assert record["attempts"] == 0
    assert redis_client.llen("parked") == 1
    redis_client.delete("parked")


def test_unknown_id_is_404(api: Any) -> None:
    response = api.get("/emails/00000000-0000-0000-0000-000000000000", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": "no email with this id"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_key_is_401(api: Any, headers: dict[str, str], redis_client: redis.Redis) -> None:
    before = _queue_lengths(redis_client)
    post = api.post("/emails", json={"to": ["a@example.com"], "subject": "s", "text": "x"}, headers=headers)
    get = api.get("/emails/anything", headers=headers)
    assert post.status_code == 401 and get.status_code == 401
    assert _queue_lengths(redis_client) == before


def test_second_key_works(api: Any) -> None:
    response = api.post(
        "/emails",
        json={"to": ["a@example.com"], "subject": "s", "text": "x"},
        headers={"Authorization": "Bearer second-key-abcdef"},
    )
    assert response.status_code == 202


def test_no_api_keys_means_closed(api: Any, settings_env: Any) -> None:
    settings_env(API_KEYS="")
    response = api.post("/emails", json={"to": ["a@example.com"], "subject": "s", "text": "x"}, headers=AUTH)
    assert response.status_code == 503
    assert "API_KEYS" in response.json()["detail"]


def test_health(api: Any) -> None:
    assert api.get("/health").json() == {"status": "ok", "redis": "ok"}


def _big(n: int) -> str:
    return base64.b64encode(b"x" * n).decode()


BAD_INPUTS = [
    ({"subject": "Hi\r\nBcc: victim@example.com"}, ["body", "subject"]),
    ({"subject": "Hi\nthere"}, ["body", "subject"]),
    ({"headers": {"X-Tag": "a\r\nBcc: victim@example.com"}}, ["body", "headers", "X-Tag"]),
    ({"headers": {"Bcc": "victim@example.com"}}, ["body", "headers"]),
    ({"to": ["not-an-address"]}, ["body", "to", 0]),
    ({"to": ["a@example.com\r\nRCPT TO:<x@example.com>"]}, ["body", "to", 0]),
    ({"cc": ["@example.com"]}, ["body", "cc", 0]),
    ({"text": None, "template": "no_such_template"}, ["body", "template"]),
    ({"text": None, "template": "../templates/test_email"}, ["body", "template"]),
    ({"text": None, "template": "reset_password", "context": {"username": "u"}}, ["body", "context"]),
    ({"text": "x" * 20001}, ["body", "text"]),
    ({"attachments": [{"filename": "a.bin", "content": _big(30001)}]}, ["body", "attachments"]),
    (
        {"attachments": [{"filename": "../../etc/passwd", "content": _big(3)}]},
        ["body", "attachments", 0, "filename"],
    ),
    (
        {"attachments": [{"filename": "a.bin", "content": "not base64!"}]},
        ["body", "attachments", 0, "content"],
    ),
    ({"to": []}, ["body", "to"]),
    ({"text": None}, ["body"]),
]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(("change", "loc"), BAD_INPUTS)
def test_bad_input_is_422_naming_the_field_and_nothing_is_queued(
    api: Any, smtp_server: SmtpServer, redis_client: redis.Redis, change: dict[str, Any], loc: list[Any]
) -> None:
    email = {"to": ["ok@example.com"], "subject": "fine", "text": "fine"}
    email.update(change)
    email = {k: v for k, v in email.items() if v is not None}
    before = _queue_lengths(redis_client)
    response = api.post("/emails", json=email, headers=AUTH)
    assert response.status_code == 422, response.text
    locations = [item["loc"][: len(loc)] for item in response.json()["detail"]]
    assert loc in locations, response.json()
    assert _queue_lengths(redis_client) == before
    assert no_email_left(redis_client)
    # A good email sent afterwards is the only thing the server ever sees.
    good = api.post("/emails", json={"to": ["ok@example.com"], "subject": "after", "text": "x"}, headers=AUTH)
    wait_until(lambda: len(smtp_server.handler.messages) == 1, 10, "the good email")
    assert smtp_server.handler.messages[0].message["Subject"] == "after"
    assert good.status_code == 202


def test_openapi_documents_fields_and_errors(api: Any) -> None:
    schema = api.get("/openapi.json").json()
    post = schema["paths"]["/emails"]["post"]
    assert {"202", "401", "422", "503"} <= set(post["responses"])
    assert {"200", "401", "404", "503"} <= set(schema["paths"]["/emails/{email_id}"]["get"]["responses"])
    request = schema["components"]["schemas"]["EmailRequest"]["properties"]
    for name in (
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "template",
        "context",
        "text",
        "html",
        "headers",
        "attachments",
    ):
        assert request[name].get("description"), name
    assert schema["components"]["securitySchemes"]
