"""Configuration: every Celery key is real, and a bad setting stops start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from celery.app.defaults import flatten

from tests.conftest import ROOT


def test_every_celeryconfig_key_is_a_real_celery_setting() -> None:
    # Imported here, not at collection: it reads the settings the test run points at our servers.
    from celery.app.defaults import NAMESPACES

    import celeryconfig

    known = {name for name, _ in flatten(NAMESPACES)}
    ours = {
        name
        for name, value in vars(celeryconfig).items()
        if not name.startswith("_")
        and name.islower()
        and not callable(value)
        and not hasattr(value, "__file__")
    }
    assert ours, "celeryconfig defines no settings"
    assert ours <= known, f"Celery ignores unknown keys: {sorted(ours - known)}"


def test_configuration_reaches_the_app() -> None:
    from tasks import app

    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"]
    # No extended results: they would keep a by-name client's addresses and body in Redis.
    assert not app.conf.result_extended and not app.conf.task_track_started
    assert [q.name for q in app.conf.task_queues] == ["transactional", "bulk", "celery", "webhooks"]
    assert app.conf.worker_pool == "threads" and app.conf.worker_concurrency == 32
    # Off until Flower turns them on (tests/test_flower.py sees it do so).
    assert not app.conf.worker_send_task_events
    assert app.conf.broker_url == os.environ["REDIS_URL"]
    assert type(app.backend).__name__ == "QuietRedisBackend"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EMAIL_MAX_RETRIES", "lots"),
        ("SMTP_PORT", "99999"),
        ("REDIS_URL", "http://x"),
        ("EMAIL_RETRY_BACKOFF", "-1"),
        ("REDIS_SENTINELS", "sentinel-without-a-port"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "neoforge.cli", "send", "--to", "a@example.com", "--subject", "s", "--text", "x"],
        ["-m", "celery", "-A", "tasks", "worker", "-Q", "never-used"],
    ],
    ids=["cli", "worker"],
)
def test_bad_setting_stops_start_up_with_one_line(name: str, value: str, command: list[str]) -> None:
    env = {**os.environ, name: value}
    result = subprocess.run(
        [sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
