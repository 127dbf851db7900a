"""``neoforge serve``: the production API, one uvicorn process per core, sharing state through Redis.

Real processes: the command as documented (with two processes, as on a two-core
machine), a real redis-server. Limits and metrics are Redis-wide, so every
process agrees: a per-process counter would let each process take its own
allowance, and a per-process metric would depend on which process answered.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from neoforge.processes import free_port, start, stop, wait_until
from neoforge.serve import default_workers, uvicorn_command
from tests.conftest import AUTH, ROOT

LIMIT = 6


def _children(pid: int) -> list[int]:
    """uvicorn's API processes under PID (multiprocessing's resource tracker is not one)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def served(tmp_path: Path, environment: dict[str, str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**environment, "API_RATE_LIMIT_REQUESTS": str(LIMIT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "neoforge.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "2", "--log-level", "warning"]  # fmt: skip
    process = start(command, env=env, log=tmp_path / "serve.log", cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(_children(process.pid)) >= 2 and _up(url), 60, "neoforge serve")
        yield url, process.pid
    finally:
        stop(process, timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_processes_share_the_rate_limit_and_the_metrics(served: tuple[str, int]) -> None:
    url, pid = served
    assert len(_children(pid)) == 2  # uvicorn's supervisor runs two API processes

    def post(number: int) -> int:
        body = {"to": [f"serve{number}@example.com"], "subject": "Hi", "text": "Hello"}
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:  # a connection each
            return client.post("/emails", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(post, range(LIMIT + 4)))
    assert codes == [202] * LIMIT + [429] * 4
    for _ in range(6):  # whichever process answers, the same count
        with httpx.Client(base_url=url, timeout=30) as client:
            text = client.get("/metrics").text
        assert re.search(r'^neoforge_emails_queued_total\{priority="transactional"\} 6\.0$', text, re.M), text


def test_the_default_is_one_process_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    cores = default_workers(False)
    assert cores >= 1
    assert uvicorn_command(["--port", "1"], False)[-4:] == ["--workers", str(cores), "--port", "1"]
    assert uvicorn_command(["--workers", "3"], False)[-2:] == ["--workers", "3"]
    assert uvicorn_command([], True)[-2:] == ["--workers", "1"]
