"""Real parts for every test: redis-server, an SMTP server, a Celery worker.

pytest-celery is the plugin the design names, but its ``celery_worker``
fixture runs workers in Docker, which these machines do not have. So the
worker here is Celery's own in-process test worker
(``celery.contrib.testing.worker.start_worker``, solo pool) and, for tests of
crashes and the CLI, the real ``celery -A tasks worker`` in a subprocess.
Nothing of ours is mocked and nothing runs in eager mode.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from neoforge.processes import free_port, redis_server_command, start, stop, wait_until
from tests.smtp_server import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123456789"

# Small backoffs so that retries take fractions of a second.
TEST_ENV = {
    "SMTP_HOST": "127.0.0.1",
    "SMTP_STARTTLS": "false",
    "SMTP_SSL_TLS": "false",
    "SMTP_FROM": "noreply@neoforge.example.com",
    "SMTP_FROM_NAME": "NeoForge Tests",
    "SMTP_TIMEOUT": "5",
    "API_KEYS": f"{API_KEY},second-key-abcdef",
    "EMAIL_MAX_RETRIES": "3",
    "EMAIL_RETRY_BACKOFF": "0.2",
    "EMAIL_RETRY_BACKOFF_MAX": "0.3",
    "EMAIL_MAX_BODY_BYTES": "20000",
    "EMAIL_MAX_ATTACHMENTS_BYTES": "30000",
}


class RedisServer:
    """A redis-server process of our own, on a free port and a private folder."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.folder = folder
        self.password = password
        self.port = free_port()
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = redis_server_command(self.port, self.folder, self.password)
        self.process = start(command, log=self.folder / "redis.log")
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_until(lambda: bool(client.ping()), 20, "redis-server")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


_UNMASKED_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)*example\.com")


class _LogSpy(logging.Handler):
    """Keeps every log line of this process's run (ours, Celery's, the in-process worker's)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # aiosmtpd's own log belongs to the test SMTP server, not to the system under test.
        if not record.name.startswith("mail.log"):
            self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_personal_data_in_logs() -> Iterator[None]:
    """Every log line of the whole run is searched for the tests' recipient addresses."""
    spy = _LogSpy()
    root = logging.getLogger()
    root.addHandler(spy)
    previous = root.level
    root.setLevel(logging.DEBUG)
    logging.getLogger("neoforge.tests").debug("log spy attached")
    assert spy.lines, "the log spy sees nothing"
    yield
    root.removeHandler(spy)
    root.setLevel(previous)
    leaks = [line for line in spy.lines if _UNMASKED_ADDRESS.search(line)]
    assert not leaks, f"{len(leaks)} log line(s) carry an address, e.g. {leaks[:3]}"


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="neoforge-tests-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_root / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def environment(
    redis_server: RedisServer, smtp_server: SmtpServer, tmp_root: Path
) -> Iterator[dict[str, str]]:
    """Point settings (and so Celery) at our servers, and the workers' journal at a private
    folder, before anything reads them."""
    from neoforge.settings import get_settings

    env = {**TEST_ENV, "REDIS_URL": redis_server.url, "SMTP_PORT": str(smtp_server.port),
           "EMAIL_JOURNAL_DIR": str(tmp_root / "journal")}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Change settings for one test: settings_env(EMAIL_MAX_RETRIES="0")."""
    from neoforge.settings import get_settings

    def change(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield change
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def _clean(client: redis.Redis) -> None:
    # Our keys, queued messages and results; kombu's bindings stay so the
    # running worker keeps consuming.
    for pattern in ("neoforge:*", "celery-task-meta-*", "unacked*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.delete("transactional", "bulk", "celery", "webhooks")


@pytest.fixture(autouse=True)
def clean_state(redis_client: redis.Redis, smtp_server: SmtpServer) -> Iterator[None]:
    _clean(redis_client)
    smtp_server.handler.reset()
    yield
    # Also after: a module's worker starts before the next test's own clean-up
    # and would otherwise deliver what this test left queued.
    _clean(redis_client)
    smtp_server.handler.reset()


@pytest.fixture(scope="session")
def celery_app(environment: dict[str, str]) -> Any:
    from tasks import app

    # Read the configuration now, while settings point at the test servers: a
    # test that points REDIS_URL elsewhere for a while must not become the
    # broker of every later one.
    assert app.conf.broker_url == environment["REDIS_URL"]
    return app


@pytest.fixture(scope="module")
def worker(celery_app: Any) -> Iterator[Any]:
    """Celery's in-process test worker (solo pool) consuming both queues, for one test module.

    Modules that run the real worker CLI do not use it, so nothing competes for their messages.
    """
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as running:
        yield running


@pytest.fixture
def api(environment: dict[str, str]) -> Iterator[Any]:
    """The real FastAPI app (lifespan included) behind an HTTP test client."""
    from fastapi.testclient import TestClient

    from neoforge.main import app

    with TestClient(app) as client:
        yield client


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def wait_for_status(email_id: str, wanted: set[str], timeout: float = 20.0) -> dict[str, Any]:
    """Poll the store until the email reaches one of WANTED; return its record."""
    from neoforge.runtime import current

    record: dict[str, Any] | None = None

    def reached() -> bool:
        nonlocal record
        record = current().store.get(email_id)
        return record is not None and record["status"] in wanted

    try:
        wait_until(reached, timeout, f"email {email_id} in {wanted}")
    except TimeoutError:
        raise AssertionError(f"email {email_id} never reached {wanted}; last record: {record}") from None
    assert record is not None
    return record


def statuses(client: redis.Redis, ids: list[str]) -> list[str]:
    """The status of each of IDS, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for email_id in ids:
            pipe.hget(f"neoforge:email:{email_id}", "status")
        return [str(s) for s in pipe.execute()]


def all_sent(client: redis.Redis, ids: list[str], timeout: float) -> None:
    """Poll until every one of IDS is sent; fail with the count of each status seen last."""
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = statuses(client, ids)
        return all(s == "sent" for s in last)

    try:
        wait_until(done, timeout, "every email sent", interval=0.2)
    except TimeoutError:
        raise AssertionError({s: last.count(s) for s in set(last)}) from None


def no_email_left(client: redis.Redis) -> bool:
    """No record, payload or index entry of any email (counters and heartbeats may exist)."""
    return not list(client.scan_iter("neoforge:email:*")) and not any(
        client.zcard(f"neoforge:{index}") for index in ("pending", "scheduled", "failed")
    )


@pytest.fixture
def cli_workers(
    tmp_path: Path, environment: dict[str, str]
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Real ``celery -A tasks worker`` processes, stopped after the test.

    ``start(queues=None, *args, **env)``: QUEUES for ``-Q`` (None: the configured ones), extra
    command-line ARGS, and ENV on top of the test environment.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(queues: str | None = None, *args: str, **env: str) -> subprocess.Popen[bytes]:
        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        command = ["worker", "--loglevel", "INFO", "--hostname", f"{name}@%h", "--without-gossip",
                   "--without-mingle", *args, *(["-Q", queues] if queues else [])]  # fmt: skip
        process = celery_cli(*command, env={**environment, **env}, log=tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        stop(process, timeout=30)


def celery_cli(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The real ``celery -A tasks ...`` command, in its own process group."""
    return start(
        [sys.executable, "-m", "celery", "-A", "tasks", *args], env={**os.environ, **env}, log=log, cwd=ROOT
    )


def now() -> float:
    return time.monotonic()
