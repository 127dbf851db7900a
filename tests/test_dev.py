"""``neoforge dev``: the whole system from one command, fitting a developer's habits.

``neoforge dev`` runs as a real subprocess in a temporary project folder (its ``.env``, its
``.dev/``), on ports of the OS's choosing (``NEOFORGE_DEV_*_PORT=0``) so tests stay parallel-safe.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from neoforge.processes import stop, wait_until


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


OURS = {"REDIS_URL", "SMTP_HOST", "SMTP_PORT", "API_KEYS", "SMTP_FROM_NAME", "FLOWER_BASIC_AUTH"}
ANY_PORT = {f"NEOFORGE_DEV_{name}_PORT": "0" for name in ("API", "FLOWER", "SMTP", "VIEWER", "REDIS")}


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OURS} | ANY_PORT | extra


def _start_dev(project: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "neoforge.cli", "dev"],
            cwd=project, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _banner(log: Path) -> dict[str, str]:
    wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), 90, "neoforge dev")
    text = log.read_text()
    found = {
        "api": re.search(r"API\s+(http://127\.0\.0\.1:\d+)", text),
        "key": re.search(r"API key\s+(\S+)", text),
        "flower": re.search(r"Flower\s+(http://127\.0\.0\.1:\d+)\s+user \S+\s+password (\S+)", text),
        "mail": re.search(r"Mail\s+(http://127\.0\.0\.1:\d+/)", text),
    }
    assert all(found.values()), text
    assert "source .dev/env" in text, text
    return {name: match.group(1) for name, match in found.items() if match} | {
        "password": found["flower"].group(2) if found["flower"] else ""
    }


def _queue(banner: dict[str, str], subject: str) -> str:
    request = urllib.request.Request(
        f"{banner['api']}/emails",
        data=json.dumps({"to": ["new@example.com"], "subject": subject, "text": "it works"}).encode(),
        headers={"Authorization": f"Bearer {banner['key']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return str(json.loads(response.read())["id"])


def _end_leftovers(pids: set[int]) -> None:
    """If the code under test failed to stop them, end the children we started (by PID)."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_dev_fits_a_developers_habits(tmp_path: Path) -> None:
    """.env read, .dev/env for other shells, SIGHUP stops all, a restart keeps the credentials,
    and a parent killed with SIGKILL takes its children with it."""
    (tmp_path / ".env").write_text("# the project's settings\nSMTP_FROM_NAME='Dotenv Sender'\n")
    log = tmp_path / "dev.out"
    dev = _start_dev(tmp_path, log)
    processes: set[int] = set()
    try:
        banner = _banner(log)
        email_id = _queue(banner, "hello dev")

        # The first email after the banner is in Flower's task list (events were on from the start).
        auth = base64.b64encode(f"admin:{banner['password']}".encode()).decode()

        def in_flower() -> bool:
            listing = urllib.request.Request(
                f"{banner['flower']}/api/tasks", headers={"Authorization": f"Basic {auth}"}
            )
            with urllib.request.urlopen(listing, timeout=5) as answer:
                return email_id in json.loads(answer.read())

        wait_until(in_flower, 20, "the first email in Flower's task list")

        # Caught, shown by the viewer, sent with .env's sender name.
        def in_viewer() -> list[dict[str, str]]:
            with urllib.request.urlopen(f"{banner['mail']}api/messages", timeout=5) as answer:
                return list(json.loads(answer.read()))

        wait_until(lambda: bool(in_viewer()), 30, "the caught email in the viewer")
        [row] = in_viewer()
        assert row["subject"] == "hello dev"
        assert row["from"].startswith("Dotenv Sender <"), row

        # Another shell: `source .dev/env`, then the CLI reaches this stack's Redis.
        env_file = tmp_path / ".dev" / "env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / ".dev" / "secrets.json").stat().st_mode & 0o777 == 0o600
        other_shell = subprocess.run(
            ["bash", "-c", f"source .dev/env && {sys.executable} -m neoforge.cli status {email_id}"],
            cwd=tmp_path, env={k: v for k, v in _env().items() if k not in ANY_PORT},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert other_shell.returncode == 0, other_shell.stderr
        assert json.loads(other_shell.stdout)["id"] == email_id

        processes = _descendants(dev.pid)
        assert len(processes) >= 4, processes  # redis, worker, flower, api
        dev.send_signal(signal.SIGHUP)  # the terminal closed
        assert dev.wait(60) == 0
        wait_until(lambda: not any(_alive(pid) for pid in processes), 30, "children gone after SIGHUP")
    finally:
        stop(dev)
        _end_leftovers(processes)

    # A restart: same key, same Flower password, the mail caught before still there.
    log2 = tmp_path / "dev2.out"
    dev = _start_dev(tmp_path, log2)
    processes = set()
    try:
        again = _banner(log2)
        assert (again["key"], again["password"]) == (banner["key"], banner["password"])
        with urllib.request.urlopen(f"{again['mail']}api/messages", timeout=5) as answer:
            assert len(json.loads(answer.read())) == 1
        processes = _descendants(dev.pid)
        assert len(processes) >= 4, processes
        dev.kill()  # no handler runs: the kernel must stop the children
        dev.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in processes), 30, "children gone after SIGKILL")
    finally:
        stop(dev)
        _end_leftovers(processes)


def test_a_taken_port_is_named_with_the_setting_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "neoforge.cli", "dev"],
            cwd=tmp_path, env=_env(NEOFORGE_DEV_FLOWER_PORT=str(port)),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"port {port} (Flower) is taken" in line and "NEOFORGE_DEV_FLOWER_PORT" in line, line
    assert not (tmp_path / ".dev" / "redis").exists()  # nothing was started
