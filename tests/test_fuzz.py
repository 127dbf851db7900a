"""Fuzz the HTTP API with schemathesis against its own OpenAPI schema.

Bounded (a fixed number of examples per operation) and derandomized, so CI
sends the same requests on every run. Three properties:

- with a valid key, no input causes a server error and every response matches
  the schema (status code, content type, headers, body), and input that breaks
  the schema is refused;
- without a valid key, every ``/emails`` route answers 401;
- nothing reaches the SMTP server unless it was a valid email: every accepted
  email's stored payload is a valid ``EmailRequest``, and what a real worker
  then delivers carries no injected header and only the accepted recipients.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from neoforge.main import app
from neoforge.message import EmailRequest
from neoforge.processes import wait_until
from neoforge.store import get_store, payload_key
from tests.conftest import API_KEY, AUTH
from tests.smtp_server import Received, SmtpServer

EXAMPLES = 30  # generated examples per operation (the coverage phase adds its boundary cases)
DELIVERED = 50  # accepted emails the worker delivers at the end; the others are checked, then dropped

# "No server error, and the response is the documented one", plus "input that
# breaks the schema is refused". A 503 is documented (Redis down, API_KEYS
# unset); status_code_conformance still fails it on an operation that does not
# document it.
_CHECKS = {
    "enabled": False,
    "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", "503"]},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_headers_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True},
}


def _schema(config: dict[str, Any]) -> Any:
    """The schema the app serves at /openapi.json, read without starting the app.

    ``from_asgi`` would run the app's lifespan while this module is imported,
    before the fixtures start Redis; requests start it instead, and
    schemathesis's pytest plugin stops it after each test.
    """
    loaded = schemathesis.Config.from_dict(
        {"generation": {"database": "none"}, "phases": {"stateful": {"enabled": False}}, **config}
    )
    return schemathesis.openapi.from_dict(app.openapi(), config=loaded)


AUTHORIZED = _schema({"headers": AUTH, "generation": {"mode": "all", "database": "none"}, "checks": _CHECKS})
# Only generated, schema-valid requests: the point is the missing key, not the
# coverage phase's unexpected methods or malformed bodies.
ANONYMOUS = _schema(
    {
        "generation": {"mode": "positive", "database": "none"},
        "phases": {
            "stateful": {"enabled": False},
            "examples": {"enabled": False},
            "coverage": {"enabled": False},
        },
        "checks": _CHECKS,
    }
)

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@AUTHORIZED.parametrize()
@FUZZ
def test_responses_match_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(app=app)


@ANONYMOUS.include(path_regex="^/emails").parametrize()
@settings(FUZZ, max_examples=3)
def test_every_emails_route_needs_a_key(case: schemathesis.Case) -> None:
    for authorization in ("", f"Bearer not-{API_KEY}", "Basic dGVzdDp0ZXN0"):
        response = case.call(app=app, headers={"Authorization": authorization} if authorization else None)
        assert response.status_code == 401, (authorization, response.status_code, response.text)
        case.validate_response(response)


# --- Only valid emails reach the SMTP server ---------------------------------

POST_EMAILS = AUTHORIZED["/emails"]["POST"]

# Headers our messages may carry; a caller's own (X-*, List-*, ...) are added per email.
_OUR_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
_PART_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition", "mime-version"})

# Attempts to get a second header (or recipient) in through each field that
# ends up in the message head; every one of them must be refused.
_INJECTIONS: list[dict[str, Any]] = [
    {"subject": "Hi\r\nBcc: evil@example.com"},
    {"subject": "Hi\nBcc: evil@example.com"},
    {"subject": "Hi\rBcc: evil@example.com"},
    {"headers": {"X-Tag": "a\r\nBcc: evil@example.com"}},
    {"headers": {"X-Tag\r\nBcc": "evil@example.com"}},
    {"headers": {"Bcc": "evil@example.com"}},
    {"reply_to": ["a@example.com\r\nBcc: evil@example.com"]},
    {"to": ["Evil\r\nBcc: evil@example.com <a@example.com>"]},
    {"to": ["a@example.com, evil@example.com"]},
    {"attachments": [{"filename": 'a.txt"\r\nBcc: evil@example.com', "content": "aGk="}]},
    {"attachments": [{"filename": "a.txt", "content": "aGk=", "content_type": "text/plain\r\nBcc: e@x.io"}]},
    {"idempotency_key": "k\r\nBcc: evil@example.com"},
]


def _injection(fields: dict[str, Any]) -> schemathesis.Case:
    body = {"to": ["fuzz@example.com"], "subject": "injection", "text": "x", **fields}
    return POST_EMAILS.Case(body=body, media_type="application/json")


def _deliverable(case: schemathesis.Case) -> schemathesis.Case:
    """CASE made to pass the rules the OpenAPI schema cannot state, its fuzzed content kept.

    Without this almost no generated email is accepted (a body is required, header
    names are restricted, base64 content, ...) and the SMTP side would see nothing.
    """
    body = dict(case.body)
    for name in ("template", "context", "send_at", "expires_at"):
        body.pop(name, None)  # templates have required variables; delivery must happen now
    if body.get("text") is None and body.get("html") is None:
        body["text"] = body["subject"]
    body["headers"] = {f"X-Fuzz-{i}": value for i, value in enumerate(body.get("headers", {}).values())}
    for name, most in (("to", 20), ("cc", 15), ("bcc", 15), ("reply_to", 5)):
        body[name] = [_public(address) for address in body.get(name, [])[:most]]
    body["attachments"] = [
        {"filename": item["filename"], "content": base64.b64encode(str(item["content"]).encode()).decode()}
        for item in body.get("attachments", [])
    ]
    case.body = body
    return case


def _public(address: str) -> str:
    """ADDRESS with its local part kept and a public domain (email-validator refuses .test, .local, ...)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.rsplit('.', 1)[0]}.com"


def _fuzz(strategy: st.SearchStrategy[schemathesis.Case], run: Callable[[schemathesis.Case], None]) -> None:
    FUZZ(given(case=strategy)(run))()


def test_only_valid_emails_reach_the_smtp_server(
    smtp_server: SmtpServer, redis_client: redis.Redis, celery_app: Any
) -> None:
    accepted: dict[str, dict[str, Any]] = {}  # email id -> the request body that got the 202

    def post(case: schemathesis.Case) -> None:
        # Only "no server error" here: test_responses_match_the_schema checks the rest.
        response = case.call_and_validate(app=app, checks=[not_a_server_error])
        if response.status_code == 202:
            accepted.setdefault(response.json()["id"], case.body)

    for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE):
        _fuzz(POST_EMAILS.as_strategy(generation_mode=mode, headers=AUTH), post)
    deliverable = POST_EMAILS.as_strategy(generation_mode=GenerationMode.POSITIVE, headers=AUTH)
    _fuzz(deliverable.map(_deliverable), post)
    for fields in _INJECTIONS:
        response = _injection(fields).call_and_validate(app=app, headers=AUTH, checks=[not_a_server_error])
        assert response.status_code == 422, (fields, response.status_code, response.text)

    assert len(accepted) >= 10, f"the fuzzer got only {len(accepted)} emails accepted"
    # What the worker will send is what was stored: it must be a valid email.
    requests: dict[str, EmailRequest] = {}
    for email_id in accepted:
        payload = redis_client.get(payload_key(email_id))
        assert payload is not None, email_id
        requests[email_id] = EmailRequest.model_validate_json(payload)

    # Deliver a bounded sample with a real worker; the rest are dropped unsent.
    sample = sorted(requests)[:DELIVERED]
    for email_id in sorted(requests)[DELIVERED:]:
        get_store().discard(email_id)
    from celery.contrib.testing.worker import start_worker

    from neoforge.delivery import close_connections

    try:
        with start_worker(
            celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
        ):
            wait_until(
                lambda: all(get_store().get(i)["status"] in {"sent", "failed"} for i in sample),
                60,
                f"{len(sample)} fuzzed emails delivered",
            )
    finally:
        close_connections()

    statuses = {email_id: get_store().get(email_id) for email_id in sample}
    assert all(record["status"] == "sent" for record in statuses.values()), {
        i: (r["status"], r.get("last_error")) for i, r in statuses.items() if r["status"] != "sent"
    }
    with smtp_server.handler.lock:
        received = list(smtp_server.handler.messages)
    assert sorted(smtp_server.handler.deliveries()) == sorted(sample)
    for message in received:
        _check_delivered(message, requests)
    # Checked last, so that a malformed MIME structure does not hide an injection.
    defects = {str(m.message["Message-ID"]): m.message.defects for m in received if m.message.defects}
    assert not defects, defects


def _check_delivered(received: Received, requests: dict[str, EmailRequest]) -> None:
    """RECEIVED is one accepted email, with only its recipients and no header of its own making."""
    message = received.message
    email_id = str(message["Message-ID"]).strip("<>").split("@")[0].split(".")[-1]
    assert email_id in requests, message["Message-ID"]
    request = requests[email_id]
    assert sorted(set(received.rcpt_tos)) == sorted(request.recipients()), email_id
    allowed = _OUR_HEADERS | {name.lower() for name in request.headers}
    names = [name.lower() for name in message.keys()]
    assert set(names) <= allowed, (email_id, set(names) - allowed)
    for name in ("from", "to", "subject", "message-id"):
        assert names.count(name) == 1, (email_id, name, names)
    for name, value in message.items():
        assert "\r" not in str(value) and "\n" not in str(value), (email_id, name, value)
    assert message["Subject"] == request.subject, (email_id, message["Subject"], request.subject)
    assert [a.addr_spec for a in message["To"].addresses] == list(request.to), email_id
    for part in message.walk():
        if part is not message:
            extra = {name.lower() for name in part.keys()} - _PART_HEADERS
            assert not extra, (email_id, extra)
