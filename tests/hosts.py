"""Hosts made of Linux network namespaces, and the whole product spread over them (tests, bench).

``Network``: one namespace holds a bridge (the switch); each host is a namespace of its own
(``nf-<random>-<name>``) with one veth into the switch, an address in ``10.213.N.0/24`` (N picked
so that no route of this machine uses it), loopback up, and its own host name (a UTS namespace
per process: ``socket.gethostname()`` differs per host, as the leases see it). The test runner
joins the switch with one veth of its own (``10.213.N.1``) to reach the API, Redis and the
Sentinels. ``Host.cut()`` takes the host's port on the switch down (its packets vanish, as in a
partition: nothing fails fast), ``heal()`` brings it back.

``Bed``: three Redis hosts (a ``redis-server`` and a Sentinel each; the first starts as the
primary), an SMTP host (``tests/hosts_smtp.py``), an API host (uvicorn), and worker hosts
(``celery -A tasks worker`` on REDIS_SENTINELS) added and removed as a test goes.

Every process runs through ``ip netns exec`` in a process group of its own and dies with the
runner (PR_SET_PDEATHSIG); ``close()`` stops them by PID and deletes the namespaces and the
runner's veth, also after a failure. Only names of this run are ever touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis

from neoforge.processes import redis_server_command, start, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
MASTER = "neoforge-hosts"
API_KEY = "hosts-key-0123456789"
SMTP_PORT = 2525
_SUBNETS = Path("/tmp/neoforge-netns.lock")  # two runs picking a subnet at once take turns
# The settings every process of the bed gets (small backoffs, short leases: tests stay short).
BED_ENV = {
    "SMTP_STARTTLS": "false",
    "SMTP_SSL_TLS": "false",
    "SMTP_FROM": "noreply@neoforge.example.com",
    "SMTP_TIMEOUT": "3",
    "API_KEYS": API_KEY,
    "EMAIL_MAX_RETRIES": "5",
    "EMAIL_RETRY_BACKOFF": "0.2",
    "EMAIL_RETRY_BACKOFF_MAX": "0.5",
    "REDIS_SENTINEL_MASTER": MASTER,
    "REDIS_URL": "redis://unused.invalid:1/0",  # only its database number counts with Sentinels
    "REDIS_WAIT_REPLICAS": "1",
    # A lease lasts the time limit + 5 s; a message taken by a host that vanished comes back
    # after the visibility timeout. Short ones keep the tests short.
    "BROKER_VISIBILITY_TIMEOUT": "8",
    "EMAIL_TASK_TIME_LIMIT": "4",
    "API_RATE_LIMIT_REQUESTS": "100000",
    "API_RATE_LIMIT_RECIPIENTS": "100000",
    "LOG_LEVEL": "INFO",
}


class BedUnavailable(RuntimeError):
    """Raised when this machine cannot make network namespaces: not root. As root (CI) the bed must
    work: a missing command or a namespace that cannot be made fails the test, never skips it."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Host:
    """One namespace on the switch: its name, address and the switch port it hangs on."""

    def __init__(self, network: Network, name: str, number: int) -> None:
        self.network = network
        self.name = name
        self.namespace = f"{network.tag}-{name}"
        self.address = f"{network.prefix}.{number}"
        self.port = f"p{number}"  # its veth's end in the switch namespace

    def command(self, argv: list[str]) -> list[str]:
        """ARGV run inside this host: its network namespace and a host name of its own."""
        naming = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name]
        return ["ip", "netns", "exec", self.namespace, *naming, *argv]

    def cut(self) -> None:
        """Unplug the host: its port on the switch goes down; its packets are lost, not refused."""
        _ip("-n", self.network.switch, "link", "set", self.port, "down")

    def heal(self) -> None:
        _ip("-n", self.network.switch, "link", "set", self.port, "up")


class Network:
    """The switch, the hosts on it, and every process started in them."""

    def __init__(self) -> None:
        self.tag = f"nf-{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.tag}-switch"
        self.uplink = self.tag.replace("-", "")  # the runner's veth, in this namespace
        self.prefix = ""
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def open(self) -> None:
        if os.geteuid() != 0:
            raise BedUnavailable("network namespaces need root (CI runs as root)")
        if shutil.which("ip") is None or shutil.which("unshare") is None:
            raise RuntimeError("`ip` or `unshare` missing: run scripts/system-deps.sh")
        with open(_SUBNETS, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _ip("-4", "route", "show") + _ip("-4", "-o", "address", "show")
            free = [n for n in range(256) if f"10.213.{n}." not in used]
            self.prefix = f"10.213.{random.choice(free)}"
            self._namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "switch", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "switch", "up")
            _ip("link", "add", self.uplink, "type", "veth", "peer", "name", "p1", "netns", self.switch)
            _ip("-n", self.switch, "link", "set", "p1", "master", "switch", "up")
            _ip("address", "add", f"{self.prefix}.1/24", "dev", self.uplink)
            _ip("link", "set", self.uplink, "up")

    def _namespace(self, name: str) -> None:
        try:
            _ip("netns", "add", name)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot create a network namespace as root: {exc}") from exc
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, number: int) -> Host:
        """Host NAME at address .NUMBER (2-254), plugged into the switch."""
        host = Host(self, name, number)
        self._namespace(host.namespace)
        _ip("link", "add", "eth0", "netns", host.namespace, "type", "veth",
            "peer", "name", host.port, "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", host.port, "master", "switch", "up")
        _ip("-n", host.namespace, "address", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def run(self, host: Host, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        process = start(host.command(argv), env=env, log=log, cwd=ROOT, die_with_parent=True)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process, timeout=10)
        self.processes.clear()
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.uplink)
        for name in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", name)
        self.namespaces.clear()


class Bed:
    """The product on a ``Network``: Redis + Sentinel hosts, SMTP, API, and worker hosts."""

    def __init__(self, network: Network, folder: Path) -> None:
        self.network = network
        self.folder = folder
        self.redis_hosts = [network.add_host(f"redis{i}", 11 + i) for i in range(3)]
        self.smtp = network.add_host("smtp", 30)
        self.api = network.add_host("api", 20)
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[str, tuple[Host, subprocess.Popen[bytes], dict[str, str]]] = {}
        self.restarts = 0
        self.deliveries_log = folder / "smtp" / "deliveries.jsonl"
        self.control = folder / "smtp" / "control.json"
        self.base = f"http://{self.api.address}:8000"
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def sentinels(self) -> str:
        return ",".join(f"{host.address}:26379" for host in self.redis_hosts)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **BED_ENV, "REDIS_SENTINELS": self.sentinels, "SMTP_HOST": self.smtp.address,
                "SMTP_PORT": str(SMTP_PORT), **extra}  # fmt: skip

    def start(self) -> None:
        primary = self.redis_hosts[0]
        for host in self.redis_hosts:
            self.start_redis(host, primary)
        for host in self.redis_hosts[1:]:
            wait_until(lambda h=host: self.client(h).info("replication")["master_link_status"] == "up",
                       20, "the replicas in sync")  # fmt: skip
        for host in self.redis_hosts:
            folder = self.folder / host.name / "sentinel"
            folder.mkdir(parents=True)
            (folder / "sentinel.conf").write_text(  # Sentinel rewrites its own file as it learns
                f"port 26379\nbind {host.address}\ndir {folder}\n"
                f"sentinel monitor {MASTER} {primary.address} 6379 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
            )
            command = [redis_server_command(0, folder)[0], str(folder / "sentinel.conf"), "--sentinel"]
            self.network.run(host, command, dict(os.environ), folder / "sentinel.log")
        for host in self.redis_hosts:
            wait_until(lambda h=host: _quorum(self.client(h, 26379)), 30, "the Sentinels' quorum")
        self.set_smtp()
        (self.folder / "smtp").mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.hosts_smtp", self.smtp.address, str(SMTP_PORT),
                   str(self.deliveries_log), str(self.control)]  # fmt: skip
        self.network.run(self.smtp, command, dict(os.environ), self.folder / "smtp" / "smtp.log")
        wait_until(lambda: _connects(self.smtp.address, SMTP_PORT), 30, "the SMTP host")
        uvicorn = [sys.executable, "-m", "uvicorn", "neoforge.main:app", f"--host={self.api.address}",
                   "--port=8000", "--no-access-log"]  # fmt: skip
        self.network.run(self.api, uvicorn, self.env(), self.folder / "api.log")
        wait_until(lambda: self._get("/health") is not None, 60, "the API host")

    def start_redis(self, host: Host, primary: Host) -> None:
        folder = self.folder / host.name / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        command = [*redis_server_command(6379, folder), "--bind", host.address, "--protected-mode", "no"]
        if host is not primary:
            command += ["--replicaof", primary.address, "6379"]
        self.servers[host.name] = self.network.run(host, command, dict(os.environ), folder / "redis.log")
        wait_until(lambda: bool(self.client(host).ping()), 20, f"redis-server on {host.name}")

    def client(self, host: Host, port: int = 6379) -> redis.Redis:
        return redis.Redis(host=host.address, port=port, socket_timeout=2, socket_connect_timeout=1,
                           decode_responses=True)  # fmt: skip

    def primary(self) -> Host:
        """The Redis host the Sentinels name as the primary now."""
        address, _ = self.client(self.redis_hosts[0], 26379).sentinel_get_master_addr_by_name(MASTER)
        return next(host for host in self.redis_hosts if host.address == address)

    def kill_redis(self, host: Host) -> None:
        """kill -9 HOST's redis-server (no shutdown, no last save); its Sentinel stays."""
        process = self.servers.pop(host.name)
        process.kill()
        process.wait(10)

    # --- worker hosts -------------------------------------------------------------------------

    def add_worker(self, name: str, number: int, **env: str) -> Host:
        """A worker host NAME (.NUMBER) running ``celery -A tasks worker`` with ENV on top."""
        host = self.network.hosts.get(name) or self.network.add_host(name, number)
        journal = self.folder / name / "journal"
        settings = self.env(EMAIL_JOURNAL_DIR=str(journal), **env)
        self.workers[name] = (host, self._worker(host, settings), settings)
        return host

    def _worker(self, host: Host, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel", "INFO",
                   "--hostname", f"{host.name}@%h", "--without-gossip", "--without-mingle"]  # fmt: skip
        return self.network.run(host, command, settings, self.folder / f"{host.name}.log")

    def supervise(self) -> None:
        """Restart a worker that exited, as compose's restart policy or systemd would."""
        for name, (host, process, settings) in self.workers.items():
            if process.poll() is not None:
                self.workers[name] = (host, self._worker(host, settings), settings)
                self.restarts += 1

    def stop_worker(self, name: str) -> None:
        _, process, _ = self.workers.pop(name)
        stop(process, timeout=30)

    def stop_workers(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)

    # --- the SMTP host ------------------------------------------------------------------------

    def set_smtp(self, data_delay: float = 0.0, hold: tuple[Host, ...] = ()) -> None:
        """DATA_DELAY seconds before each 250; no reply at all (held, never recorded) to HOLD."""
        control = {"data_delay": data_delay, "hold": [host.address for host in hold]}
        self.control.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.control.with_suffix(".new")
        scratch.write_text(json.dumps(control))
        scratch.replace(self.control)

    def events(self) -> list[dict[str, Any]]:
        """What the SMTP host saw: {"id", "at", "peer"} per delivery, {"held", "at"} per held reply."""
        with open(self.deliveries_log) as log:
            return [json.loads(line) for line in log if line.endswith("\n")]

    def deliveries(self, ids: set[str] | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events() if "id" in e and (ids is None or e["id"] in ids)]

    # --- the API host -------------------------------------------------------------------------

    def post(self, key: str, recipient: str = "hosts@example.com") -> str | None:
        """POST one email with idempotency key KEY; its id on 202, None when not acknowledged."""
        body = json.dumps({"to": [recipient], "subject": f"bed {key}", "text": "x", "idempotency_key": key})
        request = urllib.request.Request(f"{self.base}/emails", data=body.encode(),
                                         headers={**_AUTH, "Content-Type": "application/json"})  # fmt: skip
        try:
            with self._http.open(request, timeout=10) as response:
                return str(json.loads(response.read())["id"])
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            return None

    def post_until_acknowledged(self, key: str) -> str:
        """As a client does: the same idempotency key again until the API acknowledges it."""
        while (email_id := self.post(key)) is None:
            time.sleep(0.05)
        return email_id

    def record(self, email_id: str) -> dict[str, Any] | None:
        return self._get(f"/emails/{email_id}")

    def _get(self, path: str) -> dict[str, Any] | None:
        request = urllib.request.Request(f"{self.base}{path}", headers=_AUTH)
        try:
            with self._http.open(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError):
            return None


_AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _connects(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=1):
        return True


def _quorum(sentinel: redis.Redis) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "CKQUORUM", MASTER))
    except redis.RedisError:
        return False  # "NOQUORUM": the other Sentinels not discovered yet
