"""The console's lists page through every email once (the dead-letter index, and SCAN over the
records); a bad CONSOLE_USERS stops start-up with one line.

In process (the real app behind FastAPI's test client, a real Redis); the records are written
by the status store itself, as queueing and a failed delivery write them.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from neoforge.errors import ConfigurationError
from neoforge.runtime import current
from neoforge.settings import get_settings
from neoforge.store import event
from tests.conftest import API_KEY

_ROW = re.compile(r'href="/console/emails/([0-9a-f-]{36})" class="id"')
HASH = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g="
_NEXT = re.compile(r'href="\?([^"]*cursor=[^"]+)">Next page')


def _sign_in(api: Any) -> None:
    login = api.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf is not None
    signed = api.post("/console/login", data={"csrf": csrf.group(1), "key": API_KEY}, follow_redirects=False)
    assert signed.status_code == 303


def _record(count: int, *, failed: bool) -> list[str]:
    store = current().store
    ids = []
    for n in range(count):
        email_id = str(uuid.uuid4())
        payload = json.dumps({"to": [f"page{n}@example.com"], "subject": "paging", "text": "x"})
        store.create(
            email_id, payload, {"recipients": 1, "priority": "bulk"}, recipients=[f"page{n}@example.com"]
        )
        if failed:
            store.mark_failed(email_id, event("failed", "554 refused", "smtp_5xx"))
        ids.append(email_id)
    return ids


def _every_page(api: Any, query: str) -> list[list[str]]:
    pages = []
    while True:
        html = api.get(f"/console/emails?{query}").text
        pages.append(_ROW.findall(html))
        found = _NEXT.search(html)
        if found is None:
            return pages
        query = found.group(1).replace("&amp;", "&")


def test_lists_page_through_every_email_once(api: Any) -> None:
    failed = _record(70, failed=True)
    queued = _record(130, failed=False)
    _sign_in(api)

    pages = _every_page(api, "status=failed")  # the dead-letter index, newest first
    assert [len(page) for page in pages] == [50, 20]
    assert [i for page in pages for i in page] == failed[::-1]

    pages = _every_page(api, "status=queued&priority=bulk")  # SCAN: pages of at least 50 until the end
    seen = [i for page in pages for i in page]
    assert sorted(seen) == sorted(queued) and len(pages) >= 2
    assert all(len(page) >= 50 for page in pages[:-1])

    assert _every_page(api, "status=failed&error_class=timeout") == [[]]
    dead = api.get("/console/dead-letters").text
    assert re.search(r">smtp_5xx</a></td><td>70<", dead)
    assert "page1@example.com" not in dead and "@example.com" not in api.get("/console/emails").text


@pytest.mark.parametrize(
    ("value", "reason"),
    [("alice:operator:hunter2-in-plain-text", "entry 1 is not name:viewer|operator"),
     (f"alice:admin:{HASH}", "entry 1 is not"), (f"bob:viewer:{HASH},alice:root:{HASH}", "entry 2 is not"),
     (f"alice:viewer:{HASH},alice:operator:{HASH}", "entry 2 repeats the name alice")],
)  # fmt: skip
def test_bad_console_users_stop_start_up(settings_env: Any, value: str, reason: str) -> None:
    settings_env(CONSOLE_USERS=value)
    with pytest.raises(ConfigurationError, match="CONSOLE_USERS") as refused:
        get_settings()
    assert reason in str(refused.value) and "hunter2" not in str(refused.value)
