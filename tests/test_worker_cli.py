"""The real commands: ``celery -A tasks worker`` and ``neoforge send`` / ``neoforge status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neoforge.processes import stop, wait_until
from tests.conftest import ROOT, celery_cli, wait_for_status
from tests.smtp_server import SmtpServer


@pytest.fixture
def cli_worker(tmp_path: Path, environment: dict[str, str]) -> Iterator[Any]:
    """``celery -A tasks worker`` (prefork) as a subprocess, on the default queues."""
    log = tmp_path / "worker.log"
    process = celery_cli(
        "worker", "--loglevel", "INFO", "--concurrency", "2", "--hostname", f"cli-{os.getpid()}@%h",
        env=environment, log=log,
    )  # fmt: skip
    yield process
    stop(process)
    # Message bodies and addresses never reach the worker's log.
    text = log.read_text()
    assert "@example.com" not in text.replace("@%h", "")


def _neoforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neoforge.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_worker_delivers_delay(cli_worker: Any, smtp_server: SmtpServer) -> None:
    from tasks import send_email

    result = send_email.delay(to=["worker@example.com"], subject="from a real worker", text="hello")
    record = wait_for_status(result.id, {"sent"}, timeout=60)
    assert record["worker"].startswith("cli-")
    [received] = smtp_server.handler.by_subject("from a real worker")
    assert received.rcpt_tos == ["worker@example.com"]


def test_neoforge_send_and_status(cli_worker: Any, smtp_server: SmtpServer) -> None:
    sent = _neoforge(
        "send", "--to", "cli@example.com", "--subject", "from the cli",
        "--template", "new_account", "--context", '{"username": "cleo", "link": "https://x.example.com"}',
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    email_id = sent.stdout.strip()
    wait_for_status(email_id, {"sent"}, timeout=60)
    status = _neoforge("status", email_id)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "sent"
    assert len(smtp_server.handler.by_subject("from the cli")) == 1


def test_neoforge_send_refuses_bad_input() -> None:
    bad = _neoforge("send", "--to", "not-an-address", "--subject", "s", "--text", "x")
    assert bad.returncode != 0
    assert "invalid email" in bad.stderr and "to" in bad.stderr


def test_neoforge_status_unknown_id() -> None:
    missing = _neoforge("status", "no-such-id")
    assert missing.returncode != 0
    assert "no email with id no-such-id" in missing.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_one_command_runs_its_processes_and_stops_them_all(
    tmp_path: Path, environment: dict[str, str], smtp_server: SmtpServer
) -> None:
    from tasks import app, send_email

    name = f"procs-{os.getpid()}"
    process = celery_cli(
        "worker", "--loglevel", "INFO", "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
        env={**environment, "WORKER_PROCESSES": "2"}, log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        # Two Celery workers answer, the second named after the first.
        nodes: set[str] = set()

        def both_answer() -> bool:
            nodes.update(node for reply in app.control.ping(timeout=0.5) for node in reply)
            return len({n for n in nodes if n.startswith(name)}) == 2

        wait_until(both_answer, 60, "both worker processes")
        assert {n.split("@")[0] for n in nodes if n.startswith(name)} == {name, f"{name}-2"}
        [sibling] = _children(process.pid)
        result = send_email.delay(to=["procs@example.com"], subject="two processes", text="x")
        assert wait_for_status(result.id, {"sent"}, timeout=60)["worker"].startswith(name)
        # A warm shutdown of the command (SIGTERM to its first process only) ends them all.
        process.terminate()
        process.wait(60)
        wait_until(lambda: not Path(f"/proc/{sibling}").exists(), 30, "the second process to end")
    finally:
        stop(process)
