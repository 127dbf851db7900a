"""Fuzz the HTTP API with schemathesis against its own OpenAPI schema.

Bounded (a fixed number of examples per operation) and derandomized, so CI
sends the same requests on every run. Three properties:

- with a valid key, no input causes a server error (5xx, 503 included: Redis is
  up and API_KEYS is set), every response is the documented one (status code,
  content type, headers, body), and input that breaks the schema is refused;
- without a valid key, every ``/emails`` route answers 401;
- nothing reaches the SMTP server unless it was a valid email: every accepted
  email's stored payload is a valid ``EmailRequest``, and what a real worker
  then delivers has no header of the caller's making and only the accepted
  recipients.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error

from neoforge.main import app
from neoforge.message import EmailRequest
from neoforge.processes import wait_until
from neoforge.runtime import close as close_runtime
from neoforge.runtime import current
from neoforge.store.encoding import unpack_payload
from neoforge.store.keys import payload_key
from tests.conftest import API_KEY, AUTH
from tests.smtp_server import Received, SmtpServer

EXAMPLES = 30  # generated examples per operation and test (the coverage phase adds its boundary cases)
DELIVERED = 50  # accepted emails the worker delivers at the end; the rest are checked, then dropped

_CHECKS = {
    "enabled": False,
    "not_a_server_error": {"enabled": True},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_headers_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True},
}


def _schema(
    generation: str, phases: dict[str, Any], headers: dict[str, str] | None = None
) -> schemathesis.BaseSchema:
    """The schema the app serves at /openapi.json, read without starting the app.

    ``from_asgi`` would run the app's lifespan while this module is imported,
    before the fixtures have started Redis; the first request starts it instead,
    and schemathesis's pytest plugin stops it after each test.
    """
    config = schemathesis.Config.from_dict(
        {
            "generation": {"mode": generation, "database": "none"},
            "phases": {"stateful": {"enabled": False}, **phases},
            "checks": _CHECKS,
            **({"headers": headers} if headers else {}),
        }
    )
    return schemathesis.openapi.from_dict(app.openapi(), config=config)


AUTHORIZED = _schema("all", {}, AUTH)
# Schema-valid requests only: the point is the missing key, not the coverage
# phase's unexpected methods or malformed bodies.
ANONYMOUS = _schema("positive", {"examples": {"enabled": False}, "coverage": {"enabled": False}})
POST_EMAILS = AUTHORIZED["/emails"]["POST"]

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def no_rate_limits() -> Iterator[None]:
    """Lift the per-key limits: a 429 is documented, so it would pass and quietly stop the fuzzing."""
    from neoforge.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("API_RATE_LIMIT_REQUESTS", "1000000")
        patch.setenv("API_RATE_LIMIT_RECIPIENTS", "1000000")
        patch.setenv("API_RATE_LIMIT_READS", "1000000")
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@AUTHORIZED.parametrize()
@FUZZ
def test_responses_match_the_schema(case: Case[Any]) -> None:
    case.call_and_validate(app=app)


def _email(**fields: Any) -> dict[str, Any]:
    return {"to": ["edge@example.com"], "subject": "edge", "text": "x", **fields}


# Values the generators never or hardly ever produce (JSON has no NaN; a number
# for a date-time is a type change), each found by a longer fuzzing run.
_EDGE_CASES = [
    pytest.param("GET", "/emails", {"query": {"status": "failed", "before": "nan"}}, id="before=nan"),
    pytest.param("POST", "/emails/requeue", {"body": {"failed_before": 0}}, id="failed_before=number"),
    pytest.param("POST", "/emails", {"body": _email(send_at=0)}, id="send_at=number"),
    pytest.param("POST", "/emails", {"body": _email(expires_at=4102444800)}, id="expires_at=number"),
]


@pytest.mark.parametrize(("method", "path", "parts"), _EDGE_CASES)
def test_edge_values_are_refused(method: str, path: str, parts: dict[str, Any]) -> None:
    case = AUTHORIZED[path][method].Case(**parts)
    response = case.call(app=app, headers=AUTH)
    assert response.status_code == 422, (method, path, parts, response.status_code, response.text)
    case.validate_response(response, headers=AUTH)


@ANONYMOUS.include(path_regex="^/emails").parametrize()
@settings(FUZZ, max_examples=3)
def test_every_emails_route_needs_a_key(case: Case[Any]) -> None:
    for authorization in ("", f"Bearer not-{API_KEY}", "Basic dGVzdDp0ZXN0"):
        response = case.call(app=app, headers={"Authorization": authorization} if authorization else None)
        assert response.status_code == 401, (authorization, response.status_code, response.text)
        case.validate_response(response)


# --- Only valid emails reach the SMTP server ---------------------------------

# Header fields our messages may carry; a caller's own (X-*, List-*, ...) are added per email.
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
_PART_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "content-disposition", "mime-version"}
)
_FIELD = re.compile(rb"^([!-9;-~]+):")  # a header field name (RFC 5322 ftext) right before its colon
_MESSAGE_ID = re.compile(rb"Message-ID:\s*<(?:[^>]*\.)?([0-9a-f-]{36})@", re.IGNORECASE)

# CR, LF and NUL in anything that ends up in the message head: refused (README: InvalidEmail).
_REFUSED: list[dict[str, Any]] = [
    {"subject": "Hi\r\nBcc: evil@example.com"},
    {"subject": "Hi\nBcc: evil@example.com"},
    {"subject": "Hi\rBcc: evil@example.com"},
    {"subject": "Hi\x00Bcc: evil@example.com"},
    {"headers": {"X-Tag": "a\r\nBcc: evil@example.com"}},
    {"headers": {"X-Tag\r\nBcc": "evil@example.com"}},
    {"headers": {"Bcc": "evil@example.com"}},
    {"reply_to": ["a@example.com\r\nBcc: evil@example.com"]},
    {"to": ["Evil\r\nBcc: evil@example.com <a@example.com>"]},
    {"to": ["a@example.com, evil@example.com"]},
    {"attachments": [{"filename": 'a.txt"\r\nBcc: evil@example.com', "content": "aGk="}]},
    {"attachments": [{"filename": "a.txt", "content": "aGk=", "content_type": "text/plain\r\nBcc: e@x.io"}]},
]
# Other characters Python's str.splitlines() breaks lines at: refused, or else
# delivered without breaking the head (checked on what the SMTP server receives).
_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ODD_BREAKS: list[dict[str, Any]] = [
    *({"subject": f"Hi{char}Reply-To : evil@example.com"} for char in _LINE_BREAKS),
    {"headers": {"X-Tag": "a\x0bReply-To : evil@example.com"}},
    {"attachments": [{"filename": "a\x0bReply-To : evil@example.com.txt", "content": "aGk="}]},
]


def _crafted(fields: dict[str, Any]) -> Case[Any]:
    case: Case[Any] = POST_EMAILS.Case(body=_email(**fields), media_type="application/json")
    return case


def _public(address: str, index: int) -> str:
    """ADDRESS with its local part kept and a public domain (email-validator refuses .test, .local, ...).

    The schema says only "string" (an address may carry a display name), so a
    generated value may have no "@" at all: then a plain address stands in.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"fuzz{index}@example.com"
    return f"{local}@{domain.rsplit('.', 1)[0]}.com"


def _deliverable(case: Case[Any]) -> Case[Any]:
    """CASE made to pass the rules the OpenAPI schema cannot state, its fuzzed content kept.

    Without this hardly any generated email is accepted (a body is required,
    header names are restricted, content is base64, ...) and the SMTP server
    would see next to nothing.
    """
    body = dict(cast(dict[str, Any], case.body))
    for name in ("template", "context", "send_at", "expires_at"):
        body.pop(name, None)  # templates need their variables; delivery must happen now
    if body.get("text") is None and body.get("html") is None:
        body["text"] = body["subject"]
    body["headers"] = {f"X-Fuzz-{i}": value for i, value in enumerate(body.get("headers", {}).values())}
    for name, most in (("to", 20), ("cc", 15), ("bcc", 15), ("reply_to", 5)):
        body[name] = [_public(address, i) for i, address in enumerate(body.get(name, [])[:most])]
    body["attachments"] = [
        {"filename": item["filename"], "content": base64.b64encode(str(item["content"]).encode()).decode()}
        for item in body.get("attachments", [])
    ]
    case.body = body
    return case


def _fuzz(strategy: st.SearchStrategy[Case[Any]], test: Callable[[Case[Any]], None]) -> None:
    FUZZ(given(case=strategy)(test))()


def test_only_valid_emails_reach_the_smtp_server(
    smtp_server: SmtpServer, redis_client: redis.Redis, celery_app: Any
) -> None:
    accepted: list[str] = []  # ids of the emails that got a 202, in order

    def post(case: Case[Any]) -> None:
        response = case.call(app=app, headers=AUTH)
        if response.status_code == 202:
            # Every check: a schema-breaking input must not have been accepted.
            case.validate_response(response, headers=AUTH)
            email_id = response.json()["id"]
            if email_id not in accepted:  # a repeated idempotency key returns the earlier id
                accepted.append(email_id)
        else:
            # test_responses_match_the_schema checks refusals.
            case.validate_response(response, headers=AUTH, checks=[not_a_server_error])

    for fields in _REFUSED:
        response = _crafted(fields).call(app=app, headers=AUTH)
        assert response.status_code == 422, (fields, response.status_code, response.text)
    for fields in _ODD_BREAKS:
        post(_crafted(fields))
    crafted = accepted[:]
    for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE):
        _fuzz(POST_EMAILS.as_strategy(generation_mode=mode), post)
    _fuzz(POST_EMAILS.as_strategy(generation_mode=GenerationMode.POSITIVE).map(_deliverable), post)
    assert len(accepted) >= 10, f"only {len(accepted)} fuzzed emails were accepted: nothing to deliver"

    # The worker sends what was stored: it must be a valid email.
    requests: dict[str, EmailRequest] = {}
    for email_id in accepted:
        payload = redis_client.get(payload_key(email_id))
        assert payload is not None, email_id
        requests[email_id] = EmailRequest.model_validate_json(unpack_payload(payload))

    # A bounded sample, the crafted emails first, goes to a real worker; the rest
    # (and those scheduled for later or that may expire first) are dropped unsent.
    due = [
        email_id
        for email_id, request in requests.items()
        if email_id not in crafted and request.expires_at is None and _record(email_id)["status"] == "queued"
    ]
    sample = (crafted + sorted(due))[:DELIVERED]
    for email_id in set(accepted) - set(sample):
        current().store.discard(email_id)
    _deliver(celery_app, sample)

    records = {email_id: _record(email_id) for email_id in sample}
    unsent = {i: (r["status"], r.get("last_error")) for i, r in records.items() if r["status"] != "sent"}
    with smtp_server.handler.lock:
        received = list(smtp_server.handler.messages)
    for message in received:
        _check_head(message, requests)
    assert not unsent, f"accepted but not sent: {unsent}"
    assert sorted(_email_id(m) for m in received) == sorted(sample)
    for message in received:
        _check_content(message, requests[_email_id(message)])


def _deliver(celery_app: Any, email_ids: list[str]) -> None:
    """Run a real worker until every one of EMAIL_IDS is sent or failed."""
    from celery.contrib.testing.worker import start_worker

    def done() -> bool:
        return all(_record(email_id)["status"] in {"sent", "failed"} for email_id in email_ids)

    try:
        with start_worker(
            celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
        ):
            wait_until(done, 60, f"{len(email_ids)} fuzzed emails delivered")
    finally:
        close_runtime()


def _record(email_id: str) -> dict[str, Any]:
    record = current().store.get(email_id)
    assert record is not None, f"no record for {email_id}"
    return record


def _email_id(received: Received) -> str:
    # From the raw bytes: a broken head may have pushed Message-ID into the body.
    found = _MESSAGE_ID.search(received.raw)
    assert found is not None, received.raw[:2000]
    return found.group(1).decode()


def _check_head(received: Received, requests: dict[str, EmailRequest]) -> None:
    """RECEIVED is an accepted email, to its recipients only, and every line of its head is ours."""
    email_id = _email_id(received)
    assert email_id in requests, email_id
    request = requests[email_id]
    assert sorted(set(received.rcpt_tos)) == sorted(request.recipients()), email_id
    allowed = _OUR_HEADERS | {name.lower() for name in request.headers}
    head, separator, _ = received.raw.partition(b"\r\n\r\n")
    assert separator, (email_id, received.raw[:2000])
    names = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue  # folded: the previous field goes on
        field = _FIELD.match(line)
        assert field is not None, f"{email_id}: a line of the head is no header field: {line!r}\n{head!r}"
        names.append(field.group(1).decode().lower())
    assert set(names) <= allowed, (email_id, set(names) - allowed, head)
    for name in ("from", "to", "subject", "message-id", "date"):
        assert names.count(name) == 1, (email_id, name, head)


def _check_content(received: Received, request: EmailRequest) -> None:
    """The parsed message says what REQUEST said: subject, To, the caller's headers; parts hold no extras."""
    message = received.message
    # Folding may turn a line-break character into a space; nothing else may change.
    assert _words(message["Subject"]) == _words(request.subject), (message["Subject"], request.subject)
    assert [address.addr_spec for address in message["To"].addresses] == list(request.to)
    for name, value in request.headers.items():
        assert _words(message[name]) == _words(value), (name, message[name], value)
    for part in message.walk():
        if part is not message:
            assert {name.lower() for name in part} <= _PART_HEADERS, part.items()
    assert not message.defects, (message["Message-ID"], message.defects, received.raw[:1000])


def _words(value: object) -> list[str]:
    return str(value).split()
