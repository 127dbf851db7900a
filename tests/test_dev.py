"""``neoforge dev``: the whole system from one command, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
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


def test_dev_brings_everything_up_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    ours = {"REDIS_URL", "SMTP_HOST", "SMTP_PORT", "API_KEYS"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    log = tmp_path / "dev.out"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "neoforge.cli", "dev", "--data-dir", str(tmp_path / "data"),
             "--api-port", "0", "--flower-port", "0", "--smtp-port", "0", "--redis-port", "0"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), 90, "neoforge dev")
        text = log.read_text()
        api = re.search(r"API\s+(http://127\.0\.0\.1:\d+)", text)
        key = re.search(r"API key\s+(\S+)", text)
        flower = re.search(r"Flower\s+(http://127\.0\.0\.1:\d+)\s+user (\S+)\s+password (\S+)", text)
        assert api and key and flower, text

        request = urllib.request.Request(
            f"{api.group(1)}/emails",
            data=json.dumps({"to": ["new@example.com"], "subject": "hello dev", "text": "it works"}).encode(),
            headers={"Authorization": f"Bearer {key.group(1)}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            email_id = json.loads(response.read())["id"]

        # The first email after the banner is in Flower's task list (events were on from the start).
        auth = base64.b64encode(f"{flower.group(2)}:{flower.group(3)}".encode()).decode()

        def in_flower() -> bool:
            listing = urllib.request.Request(
                f"{flower.group(1)}/api/tasks", headers={"Authorization": f"Basic {auth}"}
            )
            with urllib.request.urlopen(listing, timeout=5) as answer:
                return email_id in json.loads(answer.read())

        wait_until(in_flower, 20, "the first email in Flower's task list")

        mail = tmp_path / "data" / "mail"
        wait_until(lambda: any(mail.glob("*.eml")), 60, "the caught email")
        [saved] = list(mail.glob("*.eml"))
        assert b"Subject: hello dev" in saved.read_bytes()
        assert email_id.encode() in saved.read_bytes()

        processes = _descendants(dev.pid)
        assert len(processes) >= 4, processes  # redis, worker (+ pool), flower, api
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
        wait_until(lambda: not any(_alive(pid) for pid in processes), 30, "children gone")
    finally:
        stop(dev)
    assert "caught mail" in log.read_text()
