"""Redis full (maxmemory, noeviction) and Redis's disk full (MISCONF), with real processes.

A real ``celery -A tasks worker`` delivers from a redis-server of this module,
whose data folder is a small tmpfs mounted here (and always unmounted); the
disk fills with a file of the test's own. The worker must stay up, pause,
and resume by itself; deliveries are counted per email id at the SMTP server.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from neoforge.metrics import render
from neoforge.processes import wait_until
from tests.conftest import RedisServer, all_sent
from tests.smtp_server import SmtpServer

# A short visibility timeout: a message Redis handed out but then refused to
# record as unacknowledged (the moment it filled up) is published again by
# the recovery sweep within seconds.
ENV = {
    "BROKER_VISIBILITY_TIMEOUT": "4",
    "EMAIL_TASK_TIME_LIMIT": "2",
    "EMAIL_SCHEDULER_INTERVAL": "0.2",
    "EMAIL_MAX_RETRIES": "10",
}


@pytest.fixture(scope="module")
def tmpfs() -> Iterator[Path]:
    """A 16 MB tmpfs of our own (root only), unmounted afterwards whatever happened."""
    folder = Path(tempfile.mkdtemp(prefix="neoforge-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        with contextlib.suppress(OSError):
            folder.rmdir()


@pytest.fixture(scope="module")
def small_redis(tmpfs: Path, celery_app: Any) -> Iterator[RedisServer]:
    # celery_app first: Celery reads its configuration once per process, and must read the
    # session's (this module points REDIS_URL at its own small Redis for a while).
    server = RedisServer(tmpfs / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def full_client(small_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(small_redis.url, decode_responses=True)
    client.flushall()
    yield client
    client.config_set("maxmemory", 0)
    client.close()


@pytest.fixture
def worker_on(
    cli_workers: Callable[..., subprocess.Popen[bytes]], small_redis: RedisServer, tmp_path: Path
) -> Callable[..., subprocess.Popen[bytes]]:
    def start(queue: str, **env: str) -> subprocess.Popen[bytes]:
        env = {**ENV, "REDIS_URL": small_redis.url, "EMAIL_JOURNAL_DIR": str(tmp_path / "journal"), **env}
        return cli_workers(queue, "--concurrency", "2", **env)

    return start


def _queue(url: str, queue: str, count: int, subject: str) -> list[str]:
    from tasks import send_email

    with Connection(url) as connection:
        return [
            send_email.apply_async(
                kwargs={"to": [f"full{n}@example.com"], "subject": subject, "text": "x" * 300},
                queue=queue, connection=connection,
            ).id
            for n in range(count)
        ]  # fmt: skip


def _log(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob("w*.log"))


def _exactly_once(server: SmtpServer, ids: list[str]) -> None:
    counts = server.handler.deliveries()
    assert {email_id: counts.get(email_id) for email_id in ids} == dict.fromkeys(ids, 1)


def test_worker_survives_a_full_redis_and_resumes_by_itself(
    worker_on: Any, full_client: redis.Redis, small_redis: RedisServer, smtp_server: SmtpServer,
    settings_env: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """Redis at maxmemory when the worker starts, then again while it sends: it stays up and drains."""
    settings_env(REDIS_URL=small_redis.url)
    queue = f"full-{uuid.uuid4().hex[:8]}"
    ids = _queue(small_redis.url, queue, 6, "full")
    # Over the limit before the worker starts: on main it exits at once.
    used = int(full_client.info("memory")["used_memory"])
    full_client.config_set("maxmemory", used // 2)
    assert f"neoforge_redis_maxmemory_bytes {float(used // 2)}".encode() in render(full_client)
    worker = worker_on(queue)
    wait_until(lambda: _log(tmp_path).count("maxmemory") >= 3 or worker.poll() is not None, 20, "a refusal")
    assert worker.poll() is None, _log(tmp_path)[-3000:]
    assert not smtp_server.handler.deliveries()
    full_client.config_set("maxmemory", 0)
    all_sent(full_client, ids, 30)
    _exactly_once(smtp_server, ids)

    # Full again while it is sending: it pauses, finishes what it holds, resumes by itself.
    smtp_server.handler.data_delay = 0.3
    more = _queue(small_redis.url, queue, 8, "full again")
    wait_until(lambda: any(e in smtp_server.handler.deliveries() for e in more), 10, "a first delivery")
    refusals = _log(tmp_path).count("maxmemory")
    used = int(full_client.info("memory")["used_memory"])
    full_client.config_set("maxmemory", used // 2)
    # Paused by its storage gate, or its consumer refused and reconnecting.
    wait_until(lambda: "worker.paused" in _log(tmp_path) or _log(tmp_path).count("maxmemory") > refusals + 2,
               10, "the worker paused")  # fmt: skip
    assert worker.poll() is None
    full_client.config_set("maxmemory", 0)
    all_sent(full_client, more, 30)
    assert worker.poll() is None
    _exactly_once(smtp_server, ids + more)


def _refuses_writes(client: redis.Redis) -> bool:
    try:
        client.set("neoforge:test:probe", uuid.uuid4().hex)
    except redis.ResponseError as exc:
        return "MISCONF" in str(exc)
    return False


def _fill(folder: Path) -> Path:
    """Fill the file system of FOLDER to the last byte with a file of ours; return it."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_worker_survives_a_failing_disk_and_resumes_by_itself(
    worker_on: Any, full_client: redis.Redis, small_redis: RedisServer, smtp_server: SmtpServer,
    settings_env: Any, tmp_path: Path, tmpfs: Path,
) -> None:  # fmt: skip
    """Redis's disk full (append-only writes fail: MISCONF, every write refused): the worker stays up,
    and every email is delivered exactly once after the disk has room again."""
    settings_env(REDIS_URL=small_redis.url)
    queue = f"disk-{uuid.uuid4().hex[:8]}"
    worker = worker_on(queue)
    smtp_server.handler.data_delay = 0.3
    ids = _queue(small_redis.url, queue, 8, "disk full")
    wait_until(lambda: any(e in smtp_server.handler.deliveries() for e in ids), 10, "a first delivery")
    filler = _fill(tmpfs)
    try:
        wait_until(lambda: full_client.info("persistence")["aof_last_write_status"] == "err", 10, "MISCONF")
        with pytest.raises(redis.ResponseError, match="MISCONF"):
            full_client.set("neoforge:test:write", "refused")
        assert b'neoforge_redis_persistence_ok{kind="aof"} 0.0' in render(full_client)
        wait_until(lambda: _log(tmp_path).count("MISCONF") >= 3 or worker.poll() is not None, 10, "refusals")
        assert worker.poll() is None, _log(tmp_path)[-3000:]
    finally:
        filler.unlink()
    all_sent(full_client, ids, 40)
    assert worker.poll() is None
    _exactly_once(smtp_server, ids)


def test_a_delivery_redis_would_not_record_is_never_a_dead_letter_nor_sent_again(
    worker_on: Any, full_client: redis.Redis, small_redis: RedisServer, smtp_server: SmtpServer,
    settings_env: Any, tmp_path: Path, tmpfs: Path,
) -> None:  # fmt: skip
    """The disk stays full longer than a sent email's record is tried: the acceptance goes to the
    worker's journal, is recorded once Redis writes again, and a requeue does not send it twice."""
    from neoforge.runtime import current

    settings_env(REDIS_URL=small_redis.url)
    queue = f"journal-{uuid.uuid4().hex[:8]}"
    worker = worker_on(queue)
    fillers: list[Path] = []
    once = threading.Lock()

    def fill_before_the_reply() -> None:
        # Inside the server, after the whole message came in and before its 250: the DATA mark
        # is written, the sent record will not be. A write of ours makes Redis meet its full
        # disk at once, so every write after it is refused (MISCONF).
        with once:
            if not fillers:
                fillers.append(_fill(tmpfs))
                wait_until(lambda: _refuses_writes(full_client), 5, "Redis refusing writes")

    smtp_server.handler.data_hook = fill_before_the_reply
    ids = _queue(small_redis.url, queue, 4, "journaled")
    try:
        wait_until(
            lambda: "email.sent_journaled" in _log(tmp_path) or worker.poll() is not None, 20, "journal"
        )
        assert worker.poll() is None, _log(tmp_path)[-3000:]
    finally:
        smtp_server.handler.data_hook = None
        for filler in fillers:
            filler.unlink()
    all_sent(full_client, ids, 40)
    assert not full_client.zcard("neoforge:failed")
    assert not any(current().store.requeue(email_id) for email_id in ids)
    _exactly_once(smtp_server, ids)
    assert worker.poll() is None
