"""The processes of one benchmark run: started on free loopback ports, stopped by PID, always.

A ``Stack`` owns a private folder, one ``redis-server`` shared by both systems
(NeoForge Mail on database 0, the baseline on database 1), and whatever each
scenario starts: sinks, the slow proxy, workers, API servers. ``close()`` stops
every process it started, by process group id, in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx2 as httpx
import redis

from bench.emails import SENDER
from bench.sink import SmtpSink, greets
from neoforge.processes import free_port, redis_server_command, start, stop, wait_until

__all__ = ["API_KEY", "ROOT", "Stack", "System"]

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key-0123456789abcdef"
System = str  # "baseline" or "ours"


class Stack:
    """Every process of a run, and the environment each system's processes get."""

    def __init__(self, folder: Path, sink_binary: str) -> None:
        self.folder = folder
        self.sink_binary = sink_binary
        # What to call to stop each thing started, by PID, oldest first.
        self._started: dict[int, Callable[[], None]] = {}
        self.redis_port = free_port()
        self.redis_pid = 0

    @classmethod
    def create(cls, sink_binary: str) -> Stack:
        """A stack in a new private temporary folder."""
        return cls(Path(tempfile.mkdtemp(prefix="neoforge-bench-")), sink_binary)

    # -- lifecycle -----------------------------------------------------------

    def start_redis(self) -> None:
        """Start the run's redis-server (loopback, append-only, as NeoForge Mail runs it)."""
        data = self.folder / "redis"
        data.mkdir(parents=True, exist_ok=True)
        process = self._start(redis_server_command(self.redis_port, data), "redis.log")
        self.redis_pid = process.pid
        client = self.redis(0)
        wait_until(lambda: bool(client.ping()), 20, "redis-server")
        client.close()

    def close(self) -> None:
        """Stop every process this stack started, newest first."""
        while self._started:
            self._started.popitem()[1]()

    def _start(
        self, command: Sequence[str], log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        process = start(command, env=env, log=self.folder / log, cwd=ROOT)
        self._started[process.pid] = lambda: stop(process)
        return process

    def stop(self, pid: int) -> None:
        """Stop the process PID started by this stack (and its group) now, rather than at ``close()``."""
        stopper = self._started.pop(pid, None)
        if stopper is not None:
            stopper()

    def stop_worker(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """Warm shutdown: SIGTERM to the worker's main process only, so tasks in progress finish.

        (A signal to the whole group would kill the pool processes mid-task.)
        Its group is ended by PID afterwards either way.
        """
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        self.stop(process.pid)

    # -- Redis -----------------------------------------------------------------

    def redis_url(self, system: System) -> str:
        """The Redis URL SYSTEM uses: database 0 for ours, 1 for the baseline."""
        return f"redis://127.0.0.1:{self.redis_port}/{0 if system == 'ours' else 1}"

    def redis(self, db: int = 0) -> redis.Redis:
        """A client of the run's redis-server."""
        return redis.Redis(host="127.0.0.1", port=self.redis_port, db=db, decode_responses=True)

    def flush(self) -> None:
        """Empty every database, so each scenario starts from nothing."""
        client = self.redis(0)
        client.flushall()
        client.close()

    # -- environment -------------------------------------------------------------

    def configure_this_process(self) -> None:
        """Point this process's Celery apps (ours and the baseline's) at the run's Redis.

        Both read their configuration when first used, so this must come first.
        """
        from neoforge.settings import get_settings

        os.environ.update(self.env("ours", 25))
        os.environ["BASELINE_BROKER_URL"] = self.redis_url("baseline")
        get_settings.cache_clear()

    def env(self, system: System, smtp_port: int) -> dict[str, str]:
        """The environment of SYSTEM's processes: Redis, and SMTP at 127.0.0.1:SMTP_PORT."""
        env = {
            **os.environ,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "SMTP_STARTTLS": "false",
            "SMTP_SSL_TLS": "false",
            "SMTP_FROM": SENDER,
            "API_KEYS": API_KEY,
            # The API's per-key limits (600 requests a minute by default) would
            # measure the limiter, not the API: the load test is one key.
            "API_RATE_LIMIT_REQUESTS": "100000000",
            "API_RATE_LIMIT_RECIPIENTS": "100000000",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if system == "ours":
            env["REDIS_URL"] = self.redis_url("ours")
        else:
            env["BASELINE_BROKER_URL"] = self.redis_url("baseline")
        return env

    # -- servers and workers -------------------------------------------------------

    def start_sink(self) -> SmtpSink:
        """A fresh smtp-sink (its count starts at zero)."""
        sink = SmtpSink(self.sink_binary, self.folder)
        sink.start()
        self._started[sink.pid] = sink.stop
        return sink

    def start_proxy(self, upstream: int, delay: float) -> tuple[subprocess.Popen[bytes], int]:
        """The slow proxy in front of 127.0.0.1:UPSTREAM; returns it and its port."""
        port = free_port()
        command = [
            sys.executable, "-m", "bench.slowproxy",
            "--listen", str(port), "--upstream", str(upstream), "--delay", str(delay),
        ]  # fmt: skip
        process = self._start(command, f"slowproxy-{port}.log")
        wait_until(lambda: greets(port), 20, "slow proxy")
        return process, port

    def start_workers(self, system: System, smtp_port: int) -> list[subprocess.Popen[bytes]]:
        """SYSTEM's workers, started the way each system's documentation tells users to.

        Ours: one ``celery -A tasks worker``, the README's command as typed (it
        starts its own processes, one per CPU). The baseline: Celery's default
        ``celery -A bench.baseline worker`` (prefork, a pool process per CPU).
        """
        return [self.start_worker(system, smtp_port)]

    def worker_groups(self, workers: list[subprocess.Popen[bytes]]) -> dict[str, int]:
        """CPU accounting names for WORKERS: ``worker``, ``worker2``, ..."""
        return {("worker" if i == 0 else f"worker{i + 1}"): w.pid for i, w in enumerate(workers)}

    def stop_workers(self, workers: list[subprocess.Popen[bytes]]) -> None:
        """Warm shutdown of every worker in WORKERS (see ``stop_worker``), all at once."""
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in workers:
            self.stop_worker(process)

    def start_worker(self, system: System, smtp_port: int) -> subprocess.Popen[bytes]:
        """``celery -A tasks worker`` (ours) or ``celery -A bench.baseline worker``, default settings."""
        app = "tasks" if system == "ours" else "bench.baseline"
        args = ["-A", app, "worker"]
        command = [sys.executable, "-m", "celery", *args, "--hostname", f"{system}-{time.time_ns()}@bench"]
        return self._start(command, f"worker-{system}.log", self.env(system, smtp_port))

    def start_api(self, system: System) -> tuple[subprocess.Popen[bytes], str]:
        """SYSTEM's API, one uvicorn process per CPU either way; returns it and its base URL.

        Ours: ``neoforge serve``, the README's production command (one process
        per core by default). The baseline: uvicorn with as many ``--workers``.
        """
        port = free_port()
        where = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        if system == "ours":
            command = [sys.executable, "-m", "neoforge.cli", "serve", *where]
        else:
            command = [sys.executable, "-m", "uvicorn", "bench.baseline_api:app", *where,
                       "--workers", str(os.cpu_count() or 1)]  # fmt: skip
        process = self._start(command, f"api-{system}.log", self.env(system, 25))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), 30, f"{system} API")
        return process, url

    def remove_folder(self) -> None:
        """Delete the run's private folder (logs, Redis data)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
